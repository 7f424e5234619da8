"""The store's error type, importable without faiss (the CLI's error handling needs it for every
command, ``imgdup train`` on a machine without faiss included)."""


class StoreError(RuntimeError):
    """A store that cannot be used as asked (other model, locked, damaged)."""

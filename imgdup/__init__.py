"""imgdup: find duplicated and manipulated images in scientific PDFs.

The Python API mirrors the command line: ``extract_panels`` (imgdup panels), ``load_model``
(the embedding model), ``ingest``, ``query`` and ``screen`` (the store and its reports).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: importing imgdup must not import torch or faiss (worker processes stay light)
    if name == "load_model":
        from .model.api import load_model

        return load_model
    if name in ("extract_panels", "ingest", "query", "screen", "reindex"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["__version__", "extract_panels", "ingest", "load_model", "query", "reindex", "screen"]

"""Pipeline stages: PDF -> figures -> panels (extract, split), isolated in worker processes."""

from .extract import DocResult, DocumentError, ExtractOptions, Limits, Panel, extract_document
from .panels_out import write_panels
from .split import split_panels
from .worker import extract_many

__all__ = ["DocResult", "DocumentError", "ExtractOptions", "Limits", "Panel", "extract_document",
           "extract_many", "split_panels", "write_panels"]

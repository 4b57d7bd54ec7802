"""The tunelab command line: parsing and printing only; the work lives in the library."""

from .app import app, main

__all__ = ["app", "main"]

"""The tunelab command line: parsing and printing only; the work lives in the library."""

import os

# Before torch loads OpenMP: worker threads keep spinning between operations instead of sleeping, so each
# of the thousands of small operations of a training step starts at once. Measured on 2 cores, LoRA on
# SmolLM2-135M: +13% tokens/s; with another process busy on one core, about the same as the default
# (36-39 vs 37 tokens/s). A value the user set wins (PASSIVE suits a machine shared with other work).
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

from .app import app, main  # noqa: E402

__all__ = ["app", "main"]

"""The review web app (`tunelab ui`): a workdir's comparisons in the browser, blind human review of the
answers, and how far the LLM judge agrees with the reviewers. The ratings live in tunelab.review."""

from .app import create_app

__all__ = ["create_app"]

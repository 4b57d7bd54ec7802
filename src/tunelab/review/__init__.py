"""Human review of a comparison's answers: the ratings store (SQLAlchemy: SQLite in the workdir by
default, a database URL for a shared server), the blind pairs a reviewer is shown, and the exports
(ratings JSONL; preference records for `tunelab data prepare` and DPO)."""

from .export import preference_rows, rating_rows, write_export
from .store import CHOICES, Rating, RatingStore, default_db_url

__all__ = ["CHOICES", "Rating", "RatingStore", "default_db_url", "preference_rows", "rating_rows", "write_export"]

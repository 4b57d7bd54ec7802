"""Where ratings live: a SQLAlchemy database, SQLite in the workdir by default (`<workdir>/review.db`) or
any database URL a team shares (postgresql://..., mysql://...). Every rating is committed as it is given,
so a restart or a crash loses nothing.

Two tables:
- ratings: one row per judgement, with the question, reference and both answers copied in, so an export
  still reads right after the comparison is re-run or deleted;
- pending_pairs: the blind pairs shown and not yet rated, by an opaque token, so the page never carries
  variant names (a reviewer reading the page source learns nothing) and a pair survives a restart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, String, Text, create_engine, delete, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..errors import TunelabError

CHOICES = ("a", "b", "tie", "both_wrong")
DB_FILE = "review.db"
MAX_REVIEWER = 100
MAX_NOTE = 5000


def default_db_url(workdir: str | Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / DB_FILE}"


class AlreadyRated(TunelabError):
    """A rating for a pair this reviewer already rated (the page answers 409)."""


class _Base(DeclarativeBase):
    pass


class _RatingRow(_Base):
    __tablename__ = "ratings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment: Mapped[str] = mapped_column(String(255), index=True)
    question_id: Mapped[str] = mapped_column(String(255))
    question: Mapped[str] = mapped_column(Text)
    reference: Mapped[str] = mapped_column(Text)
    variant_a: Mapped[str] = mapped_column(String(255))
    variant_b: Mapped[str] = mapped_column(String(255))
    answer_a: Mapped[str] = mapped_column(Text)
    answer_b: Mapped[str] = mapped_column(Text)
    choice: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(MAX_REVIEWER), index=True)
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(40))


class _PendingRow(_Base):
    __tablename__ = "pending_pairs"
    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment: Mapped[str] = mapped_column(String(255))
    question_id: Mapped[str] = mapped_column(String(255))
    variant_a: Mapped[str] = mapped_column(String(255))
    variant_b: Mapped[str] = mapped_column(String(255))
    reviewer: Mapped[str] = mapped_column(String(MAX_REVIEWER))
    created_at: Mapped[str] = mapped_column(String(40))


@dataclass
class Rating:
    """One judgement, in the agreed export format (`choice`: the better of answer_a and answer_b as
    shown, a tie, or both wrong)."""

    experiment: str
    question_id: str
    question: str
    reference: str
    variant_a: str
    variant_b: str
    answer_a: str
    answer_b: str
    choice: str
    reviewer: str
    note: str = ""
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PendingPair:
    token: str
    experiment: str
    question_id: str
    variant_a: str
    variant_b: str
    reviewer: str


def check_reviewer(name: str) -> str:
    name = " ".join(str(name).split())
    if not name:
        raise TunelabError("reviewer: give a name (it is stored with each rating)")
    if len(name) > MAX_REVIEWER:
        raise TunelabError(f"reviewer: at most {MAX_REVIEWER} characters")
    return name


def _fields(row: _RatingRow) -> Rating:
    return Rating(**{k: getattr(row, k) for k in Rating.__dataclass_fields__})


class RatingStore:
    """The ratings database at `url`; tables are created on first use."""

    def __init__(self, url: str):
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise TunelabError(f"--db: '{url}' is not a database URL (e.g. sqlite:///runs/review.db)") from None
        self.display_url = parsed.render_as_string(hide_password=True)  # never a password in a message
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            parent = Path(parsed.database).expanduser().resolve().parent
            if not parent.is_dir():
                raise TunelabError(f"--db {self.display_url}: directory {parent} does not exist")
        try:
            self.engine = create_engine(parsed)
            _Base.metadata.create_all(self.engine)
        except (SQLAlchemyError, ImportError) as exc:
            raise TunelabError(f"ratings database {self.display_url}: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0]}") from None

    def close(self) -> None:
        self.engine.dispose()

    def add(self, rating: Rating, token: str | None = None) -> Rating:
        """Store a rating (and, with `token`, retire the pending pair it answers, in one transaction)."""
        if rating.choice not in CHOICES:
            raise TunelabError(f"choice: '{rating.choice}' is not one of {', '.join(CHOICES)}")
        rating.reviewer = check_reviewer(rating.reviewer)
        if len(rating.note) > MAX_NOTE:
            raise TunelabError(f"note: at most {MAX_NOTE} characters")
        rating.created_at = rating.created_at or datetime.now(UTC).isoformat(timespec="seconds")
        with Session(self.engine) as session, session.begin():
            if token is not None:
                # two tabs (or two quick submits) holding one pair: only the first retires it
                if session.execute(delete(_PendingRow).where(_PendingRow.token == token)).rowcount != 1:
                    raise AlreadyRated("this pair was already rated: rate the next one")
            pair = {rating.variant_a, rating.variant_b}
            earlier = session.scalars(select(_RatingRow).where(
                _RatingRow.experiment == rating.experiment, _RatingRow.question_id == rating.question_id,
                _RatingRow.reviewer == rating.reviewer)).all()
            if any({r.variant_a, r.variant_b} == pair for r in earlier):
                # one reviewer's second verdict on a pair would count twice in agreement and preferences
                raise AlreadyRated(f"{rating.reviewer} already rated this pair of answers to question "
                                   f"{rating.question_id}")
            session.add(_RatingRow(**rating.to_dict()))
        return rating

    def ratings(self, experiment: str | None = None, reviewer: str | None = None) -> list[Rating]:
        query = select(_RatingRow).order_by(_RatingRow.id)
        if experiment is not None:
            query = query.where(_RatingRow.experiment == experiment)
        if reviewer is not None:
            query = query.where(_RatingRow.reviewer == reviewer)
        with Session(self.engine) as session:
            return [_fields(r) for r in session.scalars(query)]

    def put_pair(self, pair: PendingPair) -> None:
        with Session(self.engine) as session, session.begin():
            session.add(_PendingRow(**asdict(pair), created_at=datetime.now(UTC).isoformat(timespec="seconds")))

    def pair(self, token: str) -> PendingPair | None:
        with Session(self.engine) as session:
            row = session.get(_PendingRow, token)
            if row is None:
                return None
            return PendingPair(row.token, row.experiment, row.question_id, row.variant_a, row.variant_b, row.reviewer)

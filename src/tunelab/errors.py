"""User-facing errors.

Every error a user can cause (a bad file, a bad config, a missing model) is a TunelabError: the CLI
prints its message, with no traceback, and exits non-zero. Problems found in input files carry the
file, line and field they were found at, so a user can go straight to the spot.
"""

from __future__ import annotations

from dataclasses import dataclass

from .secrets import redact_text


class TunelabError(Exception):
    """An error caused by the user's input or environment; the message says what to do.

    The message is masked when the error is made (tunelab.secrets): it often quotes a backend spec, a
    URL or a server's reply, and whoever prints, logs or records it then never sees a secret."""

    exit_code = 2

    def __init__(self, *args: object):
        super().__init__(*(redact_text(a) if isinstance(a, str) else a for a in args))


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one place of an input file."""

    file: str
    line: int | None
    field: str | None
    message: str
    reason: str = "invalid"  # short machine-readable category, used for skip counts

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": field '{self.field}'"
        return f"{where}: {self.message}"


class InputError(TunelabError):
    """One or more problems in input files; the message lists them (up to a cap)."""

    def __init__(self, problems: list[Problem], total: int | None = None, header: str | None = None):
        self.problems = problems
        self.total = total if total is not None else len(problems)
        lines = [header or f"{self.total} invalid record(s); nothing was written:"]
        lines += [f"  {p}" for p in problems]
        if self.total > len(problems):
            lines.append(f"  ... and {self.total - len(problems)} more")
        super().__init__("\n".join(lines))


class ConfigError(TunelabError):
    """A config file (or override) that does not validate; lists every error with its dotted path."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))

"""Text cleaning: Unicode normalisation, control characters, whitespace and (optionally) HTML.

Cleaning runs first in `data prepare`, before PII scrubbing and dedup, so that later stages compare
and hash a canonical form. It is conservative on purpose: it never rewrites words, only invisible or
layout characters, and it leaves the inside of fenced code blocks (```) alone apart from trailing
spaces, because collapsing runs of spaces there would break code indentation and alignment.

Records whose texts end up empty, too short or too long are dropped and counted by reason.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser

from ..errors import TunelabError
from .records import Record

NORMALIZE_FORMS = ("NFC", "NFKC", "none")
DROP_REASONS = ("empty_after_cleaning", "too_short", "too_long")


@dataclass
class CleanOptions:
    normalize: str = "NFC"
    strip_html: bool = False
    min_chars: int = 1
    max_chars: int | None = None

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_FORMS:
            raise TunelabError(
                f"clean.normalize must be one of {', '.join(NORMALIZE_FORMS)}, got {self.normalize!r}"
            )
        if self.min_chars < 0:
            raise TunelabError(f"clean.min_chars must be >= 0, got {self.min_chars}")
        if self.max_chars is not None and self.max_chars < max(self.min_chars, 1):
            raise TunelabError(
                f"clean.max_chars ({self.max_chars}) must be >= 1 and >= clean.min_chars ({self.min_chars})"
            )


# Line breaks of every platform (and the Unicode line/paragraph separators) become "\n"; vertical tab
# and form feed separate lines too, so they become "\n" rather than vanish and glue words together.
_LINE_BREAKS = re.compile("\r\n?|[\x0b\x0c\x85\u2028\u2029]")
# C0/C1 control characters other than \t and \n, plus invisible characters that only ever appear as
# copy-paste debris (BOM, zero-width space, non-characters). ZWJ/ZWNJ are kept: emoji sequences and
# several scripts need them.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u200b\ufeff\ufffe\uffff]")
# Trailing runs are matched only from their first character (the lookbehind): otherwise a long run
# of spaces inside a line is retried from every position, which is quadratic.
_TRAILING_SPACE = re.compile(r"(?<![^\S\n])[^\S\n]+$", re.MULTILINE)
# A run of horizontal whitespace after a visible character (so not indentation): two or more
# characters, or a single one that is not a plain space (tab, no-break space, ...).
_INNER_SPACE = re.compile(r"(?<=\S)(?:[^\S\n]{2,}|[^\S \n])")
_BLANK_LINES = re.compile(r"\n{3,}")
_TRAILING_ASCII = re.compile(r"(?<![ \t])[ \t]+$", re.MULTILINE)
_INNER_ASCII = re.compile(r"(?<=[^ \t\n])(?:[ \t]{2,}|\t)")
_FENCE = "```"


def clean_text(s: str, opts: CleanOptions) -> str:
    """Return `s` normalised: HTML (optional), Unicode form, control characters, whitespace."""
    if opts.strip_html and ("<" in s or "&" in s):
        s = strip_html(s)
    if opts.normalize != "none":
        s = unicodedata.normalize(opts.normalize, s)
    if not s.isascii() or "\r" in s or "\x0b" in s or "\x0c" in s:
        s = _LINE_BREAKS.sub("\n", s)
    s = _CONTROL.sub("", s)
    if _FENCE in s:
        parts = s.split(_FENCE)
        # Odd parts are inside a fence; an unclosed fence runs to the end, which is the safe reading.
        s = _FENCE.join(_TRAILING_SPACE.sub("", p) if i % 2 else _tidy_prose(p) for i, p in enumerate(parts))
    else:
        s = _tidy_prose(s)
    return s.strip()


def _tidy_prose(s: str) -> str:
    if s.isascii():
        # Fast path (most texts): after control characters are gone, the only whitespace left is
        # " ", "\t" and "\n", and cheap substring tests tell which rules have anything to do.
        if " \n" in s or "\t\n" in s:
            s = _TRAILING_ASCII.sub("", s)
        if "  " in s or "\t" in s:
            s = _INNER_ASCII.sub(" ", s)
        if "\n\n\n" in s:
            s = _BLANK_LINES.sub("\n\n", s)
        return s
    s = _TRAILING_SPACE.sub("", s)
    s = _INNER_SPACE.sub(" ", s)
    return _BLANK_LINES.sub("\n\n", s)


# ------------------------------------------------------------------------------------------- HTML
_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt fieldset figcaption figure footer form h1 h2 h3 h4 "
    "h5 h6 header hr li main nav ol p pre section table tbody td tfoot th thead tr ul".split()
)
_SKIP_TAGS = frozenset(("script", "style", "head", "title", "noscript", "template"))
_INLINE_TAGS = frozenset(
    "a abbr b bdi bdo big cite code data del dfn em font i img input ins kbd label mark q s samp small "
    "span strike strong sub sup time tt u var wbr html body meta link".split()
)


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML fragment: block tags become line breaks, scripts/styles vanish.

    Something that looks like a tag but is not an HTML tag ("x <y> z", "List<String>") is kept as
    written, so prose that merely contains angle brackets survives.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIP_TAGS:
            self.skip_depth += 1
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")
        elif tag not in _INLINE_TAGS and not self.skip_depth:
            self.out.append(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _BLOCK_TAGS:
            self.out.append("\n")
        elif tag not in _INLINE_TAGS and tag not in _SKIP_TAGS and not self.skip_depth:
            self.out.append(self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")
        elif tag not in _INLINE_TAGS and not self.skip_depth:
            self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.out.append(data)


def strip_html(s: str) -> str:
    """Remove HTML tags and comments, unescape entities, turn block tags into line breaks (stdlib only)."""
    if "<" not in s:
        return html.unescape(s)
    parser = _TextExtractor()
    parser.feed(s)
    parser.close()
    return "".join(parser.out)


# ---------------------------------------------------------------------------------------- records
def clean_records(records: Sequence[Record], opts: CleanOptions) -> tuple[list[Record], dict[str, int]]:
    """Clean every text of every record; drop (and count by reason) records that no longer qualify.

    A record is "empty_after_cleaning" when any of its texts is empty (a chat turn or a reply with
    nothing left cannot be trained on); its length is the total characters of all its texts.
    """
    dropped = dict.fromkeys(DROP_REASONS, 0)
    kept: list[Record] = []

    def fn(s: str) -> str:
        return clean_text(s, opts)

    for rec in records:
        out = rec.map_texts(fn)
        lengths = [len(t) for t in out.iter_texts()]
        reason = _drop_reason(lengths, opts)
        if reason is None:
            kept.append(out)
        else:
            dropped[reason] += 1
    return kept, dropped


def _drop_reason(lengths: list[int], opts: CleanOptions) -> str | None:
    if not lengths or min(lengths) == 0:
        return "empty_after_cleaning"
    total = sum(lengths)
    if total < opts.min_chars:
        return "too_short"
    if opts.max_chars is not None and total > opts.max_chars:
        return "too_long"
    return None

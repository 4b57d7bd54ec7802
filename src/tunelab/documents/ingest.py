"""Document ingestion: Markdown, text, HTML, PDF and DOCX files into Documents with their headings.

    result = ingest("docs/")                     # a directory (recursive), a file, or a list of both
    for doc in result.documents:                 # sorted by relative path: deterministic
        doc.path, doc.title, doc.sections        # Section: heading path, body text, char offsets
    for s in result.skipped:                     # every file not ingested, with the reason
        print(s.path, s.reason)

`Document.text` is the text a chunk's character offsets point into. For Markdown and text files it is
the file itself (newlines normalised to \\n); for HTML, DOCX and PDF it is a Markdown rendering of what
was extracted (`## Heading` lines, then paragraphs), so every format reads the same downstream.

Headings: Markdown ATX (`#`) and setext headings (code fences are not headings; YAML front matter is
left out, its `title:` kept); HTML h1-h6 (BeautifulSoup, stdlib parser); DOCX "Heading N" and "Title"
styles (python-docx). PDFs have no reliable headings: each page is a section headed `page N`, so a
citation can point at the page.

Nothing is skipped silently: an empty, unreadable, undecodable, corrupt or unsupported file, a hidden
entry (name starting with '.') or a symlinked directory ends up in `skipped` with its reason.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TunelabError

# Bump when extraction changes what text or sections a file gives (indexes built before re-embed).
INGEST_VERSION = 1

FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html",
           ".pdf": "pdf", ".docx": "docx"}


@dataclass(frozen=True)
class Section:
    """A heading's body: the heading path (outermost first, () before the first heading) and the body
    text, which is `document.text[start:end]`."""

    heading: tuple[str, ...]
    text: str
    start: int
    end: int


@dataclass
class Document:
    path: str  # relative to the ingested directory, with '/' separators
    title: str
    text: str
    sections: list[Section]
    format: str
    sha256: str  # of the file's bytes: what incremental indexing compares


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class IngestResult:
    root: Path
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "documents": len(self.documents),
            "sections": sum(len(d.sections) for d in self.documents),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


class _Skip(Exception):
    """Raised by a reader: the file is not ingested, for the reason given."""


# ------------------------------------------------------------------------------------ collecting


def _base_of(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _collect(sources: Sequence[Path]) -> tuple[Path, list[tuple[Path, str]], list[Skipped]]:
    """Every candidate file with its path relative to the common root, plus skipped entries."""
    for src in sources:
        if not src.exists():
            raise TunelabError(f"document path not found: {src}")
    resolved = [s.resolve() for s in sources]
    # A directory is its own root; a file's root is its folder; several inputs share their common root
    # so that relative names never collide.
    root = Path(os.path.commonpath([str(_base_of(p)) for p in resolved]))
    files: dict[str, Path] = {}
    skipped: list[Skipped] = []

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    def walk(directory: Path) -> None:
        try:
            entries = sorted(directory.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            skipped.append(Skipped(rel(directory) + "/", f"directory cannot be read ({exc.strerror or exc})"))
            return
        for entry in entries:
            name = rel(entry)
            if entry.name.startswith("."):
                kind = "directory" if entry.is_dir() else "file"
                skipped.append(Skipped(name + ("/" if entry.is_dir() else ""), f"hidden {kind}, not read"))
            elif entry.is_dir():
                if entry.is_symlink():
                    skipped.append(Skipped(name + "/", "symlinked directory, not followed"))
                else:
                    walk(entry)
            else:
                files[name] = entry

    for src in resolved:
        if src.is_dir():
            walk(src)
        else:
            files[rel(src)] = src
    ordered = [(files[name], name) for name in sorted(files)]
    return root, ordered, skipped


def ingest(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> IngestResult:
    """Read a directory (recursively), a file, or a list of them into Documents; see the module doc."""
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    paths = [Path(s).expanduser() for s in sources]
    if not paths:
        raise TunelabError("no document paths given")
    root, files, skipped = _collect(paths)
    result = IngestResult(root=root, skipped=skipped)
    for path, name in files:
        try:
            result.documents.append(read_document(path, name))
        except _Skip as why:
            result.skipped.append(Skipped(name, str(why)))
    result.skipped.sort(key=lambda s: s.path)
    return result


def read_document(path: Path, name: str | None = None) -> Document:
    """One file as a Document; raises _Skip (with the reason) for a file that cannot be ingested."""
    name = name or path.name
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        supported = ", ".join(sorted(FORMATS))
        raise _Skip(f"unsupported file type '{path.suffix or '(none)'}' (supported: {supported})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Skip(f"cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise _Skip("empty file")
    reader = {"markdown": _markdown, "text": _plain, "html": _html, "pdf": _pdf, "docx": _docx}[fmt]
    title, text, sections = reader(data, path)
    if not sections:
        raise _Skip("no extractable text (a scanned PDF needs OCR first)" if fmt == "pdf" else "no text in file")
    return Document(path=name, title=title or path.stem, text=text, sections=sections, format=fmt,
                    sha256=hashlib.sha256(data).hexdigest())


# ------------------------------------------------------------------------------------ text helpers


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise _Skip("binary content, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Skip(f"not valid UTF-8 (byte {exc.start}); convert it to UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink [start, end) so the span has no leading or trailing whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


_INLINE_MD = [
    (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),  # links and images keep their text
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"(?<![\w*])[*_](.+?)[*_](?![\w*])"), r"\1"),
    (re.compile(r"`([^`]*)`"), r"\1"),
]


def _clean_heading(text: str) -> str:
    for pattern, repl in _INLINE_MD:
        text = pattern.sub(repl, text)
    return " ".join(text.split())


class _Path:
    """The heading path: a stack of (level, title); a heading closes every open one at its level or deeper."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, str]] = []

    def push(self, level: int, title: str) -> None:
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, title))

    @property
    def titles(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.stack)


# ------------------------------------------------------------------------------------ markdown / text

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_BLOCK_START = re.compile(r"^ {0,3}([-*+>|]|\d+[.)]\s|#|`{3}|~{3})")
_FRONT_TITLE = re.compile(r"^title:\s*['\"]?(.*?)['\"]?\s*$", re.MULTILINE)


def _front_matter(text: str) -> tuple[int, str | None]:
    """(offset where content starts, title) for a YAML front matter block at the top of a file."""
    if not text.startswith("---\n"):
        return 0, None
    match = re.search(r"^(---|\.\.\.)[ \t]*$", text[4:], re.MULTILINE)
    if not match:
        return 0, None
    block = text[4 : 4 + match.start()]
    title = _FRONT_TITLE.search(block)
    end = 4 + match.end()
    return (end + 1 if text[end : end + 1] == "\n" else end), (title.group(1).strip() if title else None)


def _markdown(data: bytes, path: Path) -> tuple[str, str, list[Section]]:
    text = _decode(data)
    offset, title = _front_matter(text)
    lines: list[tuple[int, str]] = []  # (start offset, line without newline)
    pos = offset
    for line in text[offset:].splitlines(keepends=True):
        lines.append((pos, line.rstrip("\n")))
        pos += len(line)

    # headings: (line index where the heading starts, line index after it, level, title)
    headings: list[tuple[int, int, int, str]] = []
    fence: str | None = None
    for i, (_, line) in enumerate(lines):
        opener = _FENCE.match(line)
        if fence is not None:
            if opener and opener.group(1)[0] == fence[0] and len(opener.group(1)) >= len(fence):
                fence = None
            continue
        if opener:
            fence = opener.group(1)
            continue
        atx = _ATX.match(line)
        if atx:
            headings.append((i, i + 1, len(atx.group(1)), _clean_heading(atx.group(2) or "")))
            continue
        setext = _SETEXT.match(line)
        # A setext underline needs a one-line paragraph above it (a blank line or a heading before that),
        # so a `---` rule after a list or a long paragraph stays a rule.
        if setext and i > 0 and lines[i - 1][1].strip() and not _BLOCK_START.match(lines[i - 1][1]):
            before_ok = i == 1 or not lines[i - 2][1].strip() or (headings and headings[-1][1] == i - 1)
            if before_ok and not (headings and headings[-1][1] == i):
                level = 1 if setext.group(1)[0] == "=" else 2
                headings.append((i - 1, i + 1, level, _clean_heading(lines[i - 1][1])))

    sections: list[Section] = []
    heading_path = _Path()
    end_of_text = len(text)

    def add(start_line: int, end_line: int) -> None:
        start = lines[start_line][0] if start_line < len(lines) else end_of_text
        end = lines[end_line][0] if end_line < len(lines) else end_of_text
        start, end = _trimmed(text, start, end)
        if end > start:
            sections.append(Section(heading_path.titles, text[start:end], start, end))

    body_from = 0
    for first, after, level, heading in headings:
        add(body_from, first)
        if heading:
            heading_path.push(level, heading)
        body_from = after
    add(body_from, len(lines))
    if title is None:
        title = next((h for _, _, level, h in headings if level == 1 and h), None)
    return title or path.stem, text, sections


def _plain(data: bytes, path: Path) -> tuple[str, str, list[Section]]:
    text = _decode(data)
    start, end = _trimmed(text, 0, len(text))
    sections = [Section((), text[start:end], start, end)] if end > start else []
    return path.stem, text, sections


# ------------------------------------------------------------------------------------ extracted formats


class _Builder:
    """Renders extracted headings and paragraphs as Markdown text, recording each section's span."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.path = _Path()
        self.paragraphs: list[str] = []
        self.sections: list[Section] = []

    def _write(self, text: str) -> int:
        start = self.pos
        self.parts.append(text)
        self.pos += len(text)
        return start

    def _flush(self) -> None:
        if self.paragraphs:
            body = "\n\n".join(self.paragraphs)
            start = self._write(body)
            self._write("\n\n")
            self.sections.append(Section(self.path.titles, body, start, start + len(body)))
            self.paragraphs = []

    def heading(self, level: int, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            return
        self._flush()
        self._write(f"{'#' * level} {title}\n\n")
        self.path.push(level, title)

    def paragraph(self, text: str) -> None:
        text = text.strip()
        if text:
            self.paragraphs.append(text)

    def finish(self) -> tuple[str, list[Section]]:
        self._flush()
        return "".join(self.parts).rstrip() + "\n", self.sections


def _parse_failure(kind: str, exc: Exception) -> _Skip:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _Skip(f"could not be parsed as {kind} ({detail})")


_HTML_SKIP = {"script", "style", "noscript", "template", "head", "svg", "canvas", "iframe", "object"}
_HTML_BLOCKS = {
    "p", "div", "section", "article", "main", "header", "footer", "aside", "nav", "ul", "ol", "li", "dl",
    "dt", "dd", "blockquote", "figure", "figcaption", "table", "thead", "tbody", "tfoot", "form",
    "fieldset", "address", "hr", "details", "summary", "caption",
}
_BR = "\x00"  # a <br> inside a paragraph, kept through whitespace collapsing


def _html(data: bytes, path: Path) -> tuple[str, str, list[Section]]:
    from bs4 import BeautifulSoup, Comment, Declaration, Doctype, NavigableString, ProcessingInstruction

    if b"\x00" in data[:8192]:
        raise _Skip("binary content, not HTML")
    try:
        soup = BeautifulSoup(data, "html.parser")
    except Exception as exc:  # the parser raises assorted errors on broken input; report, never crash
        raise _parse_failure("HTML", exc) from None
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text().split()) if title_tag else None
    out = _Builder()
    inline: list[str] = []
    ignored = (Comment, Declaration, Doctype, ProcessingInstruction)

    def end_paragraph() -> None:
        text = re.sub(r"\s+", " ", "".join(inline)).replace(f" {_BR}", _BR).replace(f"{_BR} ", _BR)
        out.paragraph(text.replace(_BR, "\n"))
        inline.clear()

    def walk(node) -> None:
        for child in node.children:
            if isinstance(child, ignored):
                continue
            if isinstance(child, NavigableString):
                inline.append(str(child))
                continue
            name = child.name
            if name in _HTML_SKIP:
                continue
            if re.fullmatch(r"h[1-6]", name):
                end_paragraph()
                out.heading(int(name[1]), child.get_text(" "))
            elif name == "br":
                inline.append(_BR)
            elif name == "pre":
                end_paragraph()
                out.paragraph(child.get_text().rstrip())
            elif name == "tr":
                end_paragraph()
                cells = [" ".join(c.get_text(" ").split()) for c in child.find_all(["td", "th"], recursive=False)]
                out.paragraph(" | ".join(cells))
            elif name in _HTML_BLOCKS:
                end_paragraph()
                if name == "li":
                    inline.append("- ")
                walk(child)
                end_paragraph()
            else:
                walk(child)

    walk(soup.body or soup)
    end_paragraph()
    if not title:
        h1 = soup.find("h1")
        title = " ".join(h1.get_text(" ").split()) if h1 else None
    text, sections = out.finish()
    return title or path.stem, text, sections


def _docx(data: bytes, path: Path) -> tuple[str, str, list[Section]]:
    import io

    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises zip, XML and package errors on corrupt files
        raise _parse_failure("DOCX", exc) from None
    out = _Builder()
    title = (document.core_properties.title or "").strip() or None
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells: list[str] = []
                for cell in row.cells:
                    value = " ".join(cell.text.split())
                    if not cells or cells[-1] != value:  # merged cells repeat their text
                        cells.append(value)
                out.paragraph(" | ".join(cells))
            continue
        style = (block.style.name if block.style is not None else "") or ""
        level = _docx_heading_level(style)
        if level:
            out.heading(level, block.text)
            if style == "Title" and not title:
                title = " ".join(block.text.split())
        elif style.startswith("List"):
            out.paragraph("- " + block.text.strip())
        else:
            out.paragraph(block.text)
    text, sections = out.finish()
    return title or path.stem, text, sections


def _docx_heading_level(style: str) -> int:
    if style == "Title":
        return 1
    match = re.fullmatch(r"Heading (\d)", style)
    return min(int(match.group(1)), 6) if match else 0


def _pdf(data: bytes, path: Path) -> tuple[str, str, list[Section]]:
    import io
    import logging

    from pypdf import PdfReader

    # pypdf logs every recoverable oddity of a file as a warning; the user gets a skip reason instead
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise _Skip("encrypted PDF (needs a password)")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or None
    except _Skip:
        raise
    except Exception as exc:  # pypdf raises many error types on damaged files
        raise _parse_failure("PDF", exc) from None
    out = _Builder()
    for number, page in enumerate(pages, start=1):
        body = re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in page.splitlines())).strip()
        if body:
            out.heading(1, f"page {number}")
            out.paragraph(body)
    text, sections = out.finish()
    return (str(meta_title).strip() if meta_title else None) or path.stem, text, sections


def iter_sections(documents: Sequence[Document]) -> Iterator[tuple[Document, Section]]:
    for doc in documents:
        for section in doc.sections:
            yield doc, section

"""Read user dataset files row by row, whatever their container: JSONL, JSON, CSV/TSV, Parquet, a
saved Hugging Face dataset directory, or the feedback database `tunelab serve --feedback-db` writes (its
preference pairs, feedback.py).

Each row comes out as a `RawRow`: either a dict (not yet validated against any record format; that is
`formats.py`'s job) or a `Problem` saying exactly where and why the row could not be read. A broken
row never stops the file: JSONL and CSV are read as bytes and decoded line by line, so one bad line
(invalid JSON, non-UTF-8 bytes, a runaway line) becomes one problem and reading goes on.

Whole-file errors (missing path, unknown extension, empty file, a file that is not what its
extension says) raise TunelabError naming the path.

CSV/TSV records are held to the header: a record with more or fewer values than the header has
columns is a problem at its line (never a row with fields silently missing), and a quote that closes
in the middle of a value is one too. A quoted value that never closes would swallow the rest of the
file into one value, so it stops the file with a TunelabError naming the line where the quote opened.

Positions: text formats report the 1-based line in the file where the row starts (for JSON arrays,
the line where the element starts); Parquet and datasets report the 1-based row number, and mark
the RawRow with unit="row" so messages can say "row" instead of "line".
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import Problem, TunelabError
from .feedback import SUFFIXES as FEEDBACK_SUFFIXES

JSONL_SUFFIXES = (".jsonl", ".ndjson")
SUFFIXES = (*JSONL_SUFFIXES, ".json", ".csv", ".tsv", ".parquet", *FEEDBACK_SUFFIXES)
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")

# A top-level JSON object whose only list field is one of these is a single record, not a container
# like {"data": [...]}: a chat row {"messages": [...]} has exactly one list field too.
_RECORD_LIST_FIELDS = frozenset({"messages", "conversations", "prompt", "completion", "chosen", "rejected"})
_WS = re.compile(r"[ \t\n\r]*")
_BATCH = 1024


@dataclass(slots=True)
class RawRow:
    """One row of an input file: `row` when it could be read, `problem` when it could not."""

    file: str
    line: int | None
    row: dict[str, Any] | None
    problem: Problem | None
    unit: str = "line"  # "line" for text files, "row" for Parquet and datasets


def iter_rows(
    path: str | Path, *, max_line_bytes: int = 1_000_000, split: str | None = None
) -> Iterator[RawRow]:
    """Rows of one input file (or saved dataset directory), in file order.

    Path problems (missing, unknown type) raise at once; an empty file raises when it is read.
    `split` picks the split of a saved DatasetDict ("train" by default).
    """
    path = Path(path)
    if not path.exists():
        raise TunelabError(f"{path}: no such file or directory")
    if path.is_dir():
        if not any((path / marker).exists() for marker in HF_MARKERS):
            raise TunelabError(
                f"{path} is a directory but not a saved Hugging Face dataset (no {', '.join(HF_MARKERS)}); "
                "pass the data files themselves"
            )
        return _iter_hf(path, split)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TunelabError(
            f"{path}: unsupported file type '{path.suffix or '(none)'}'; supported: {', '.join(SUFFIXES)} "
            "or a saved Hugging Face dataset directory"
        )
    if path.stat().st_size == 0:
        raise TunelabError(f"{path} is empty; expected at least one record")
    if suffix in JSONL_SUFFIXES:
        return _iter_jsonl(path, max_line_bytes)
    if suffix == ".json":
        return _iter_json(path, max_line_bytes)
    if suffix in (".csv", ".tsv"):
        return _iter_csv(path, "\t" if suffix == ".tsv" else ",", max_line_bytes)
    if suffix in FEEDBACK_SUFFIXES:
        return _iter_feedback(path)
    return _iter_parquet(path)


def _empty(path: Path) -> TunelabError:
    return TunelabError(f"{path} is empty; expected at least one record")


# -- line-oriented reading shared by JSONL and CSV ---------------------------------------------------
def _binary_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | None, int, int]]:
    """(line number, bytes or None when over the limit, file offset, length) for each physical line.

    A line over the limit is skipped in chunks, so a multi-gigabyte line is never held in memory.
    """
    lineno = 0
    offset = 0
    while True:
        raw = fh.readline(max_line_bytes + 1)
        if not raw:
            return
        lineno += 1
        start = offset
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            length = len(raw)
            while not raw.endswith(b"\n"):
                raw = fh.readline(1 << 16)
                if not raw:
                    break
                length += len(raw)
            offset += length
            yield lineno, None, start, length
            continue
        offset += len(raw)
        yield lineno, raw, start, len(raw)


def _too_long(file: str, lineno: int, length: int, limit: int) -> Problem:
    return Problem(
        file,
        lineno,
        None,
        f"line is {length} bytes, over the {limit}-byte limit; it was not parsed "
        "(split the record or raise max_line_bytes)",
        "line_too_long",
    )


def _decode(file: str, lineno: int, raw: bytes, file_offset: int) -> str | Problem:
    if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
        file_offset += len(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _utf8_problem(file, lineno, raw[exc.start], exc.start, file_offset + exc.start)


def _utf8_problem(
    file: str, lineno: int, byte: int, line_offset: int, file_offset: int, tail: str = ""
) -> Problem:
    return Problem(
        file,
        lineno,
        None,
        f"not valid UTF-8: byte 0x{byte:02x} at byte offset {line_offset} of the line "
        f"(offset {file_offset} in the file); re-save the file as UTF-8{tail}",
        "non_utf8",
    )


def type_name(value: Any) -> str:
    """The JSON name of a value's type, for messages like "expected a string, got array"."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# -- JSONL -------------------------------------------------------------------------------------------
def _iter_jsonl(path: Path, max_line_bytes: int) -> Iterator[RawRow]:
    file = str(path)
    seen = False
    with open(path, "rb") as fh:
        for lineno, raw, offset, length in _binary_lines(fh, max_line_bytes):
            if raw is None:
                seen = True
                yield RawRow(file, lineno, None, _too_long(file, lineno, length, max_line_bytes))
                continue
            if not raw.strip():
                continue
            seen = True
            text = _decode(file, lineno, raw, offset)
            if isinstance(text, Problem):
                yield RawRow(file, lineno, None, text)
                continue
            try:
                value = _loads(text)
            except json.JSONDecodeError as exc:
                yield RawRow(file, lineno, None, _json_problem(file, lineno, text, exc))
                continue
            if type(value) is not dict:
                msg = f"expected a JSON object, got {type_name(value)}"
                yield RawRow(file, lineno, None, Problem(file, lineno, None, msg, "not_object"))
                continue
            yield RawRow(file, lineno, value, None)
    if not seen:
        raise _empty(path)


_DECODER = json.JSONDecoder()


def _loads(text: str) -> Any:
    """json.loads for one line, minus its two whitespace regex passes when the line is plain JSON."""
    try:
        value, end = _DECODER.scan_once(text, 0)  # type: ignore[attr-defined]
    except StopIteration:
        return json.loads(text)  # leading whitespace or invalid: let json.loads handle or explain it
    if end == len(text) or text[end:].isspace():
        return value
    return json.loads(text)


def _json_error(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def _json_problem(file: str, lineno: int, text: str, exc: json.JSONDecodeError) -> Problem:
    # Parsed again without the line break: a string left open at the end of the line is then
    # reported as "Unterminated string", not as the newline being an invalid control character.
    try:
        json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as again:
        exc = again
    return Problem(file, lineno, None, f"invalid JSON: {_json_error(exc)}", "invalid_json")


# -- JSON --------------------------------------------------------------------------------------------
class _LineCounter:
    """Turns increasing character offsets into 1-based line numbers without rescanning the text."""

    def __init__(self, text: str):
        self.text = text
        self.offset = 0
        self.line = 1

    def at(self, offset: int) -> int:
        self.line += self.text.count("\n", self.offset, offset)
        self.offset = offset
        return self.line


def _skip_ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]


def _walk_array(text: str, pos: int, decoder: json.JSONDecoder) -> Iterator[tuple[int, Any]]:
    """Yield (start offset, value) of each element of the array at text[pos] == '['; return its end."""
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        return pos + 1
    while True:
        value, end = decoder.raw_decode(text, pos)
        yield pos, value
        pos = _skip_ws(text, end)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif text.startswith("]", pos):
            return pos + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)


def _object_fields(text: str, pos: int, decoder: json.JSONDecoder) -> tuple[list[tuple[str, int, Any]], int]:
    """([(key, value start offset, value)], end offset) of the object at text[pos] == '{'."""
    fields: list[tuple[str, int, Any]] = []
    pos = _skip_ws(text, pos + 1)
    if text.startswith("}", pos):
        return fields, pos + 1
    while True:
        if not text.startswith('"', pos):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
        key, pos = decoder.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if not text.startswith(":", pos):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
        start = _skip_ws(text, pos + 1)
        value, pos = decoder.raw_decode(text, start)
        fields.append((key, start, value))
        pos = _skip_ws(text, pos)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif text.startswith("}", pos):
            return fields, pos + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)


def _extra_data(text: str, end: int) -> None:
    rest = _skip_ws(text, end)
    if rest != len(text):
        raise json.JSONDecodeError("Extra data after the top-level value", text, rest)


def _iter_json(path: Path, max_line_bytes: int) -> Iterator[RawRow]:
    file = str(path)
    data = path.read_bytes()
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        if _is_json_lines(data[skip:].decode("utf-8", "replace"), json.JSONDecoder()):
            yield from _iter_jsonl(path, max_line_bytes)  # JSON Lines: only the bad line is lost
            return
        # One bad byte makes the whole document undecodable, so this is the only row the file gives.
        at = exc.start + skip
        lineno = data.count(b"\n", 0, at) + 1
        line_start = data.rfind(b"\n", 0, at) + 1
        tail = "; no rows of this file were read"
        yield RawRow(file, lineno, None, _utf8_problem(file, lineno, data[at], at - line_start, at, tail))
        return
    decoder = json.JSONDecoder()
    if _is_json_lines(text, decoder):
        # JSON Lines saved as .json (what datasets' Dataset.to_json writes by default).
        yield from _iter_jsonl(path, max_line_bytes)
        return
    lines = _LineCounter(text)
    count = 0
    try:
        for offset, value in _json_elements(path, text, decoder):
            count += 1
            line = lines.at(offset)
            if type(value) is dict:
                yield RawRow(file, line, value, None)
            else:
                msg = f"expected a JSON object, got {type_name(value)}"
                yield RawRow(file, line, None, Problem(file, line, None, msg, "not_object"))
    except json.JSONDecodeError as exc:
        msg = f"invalid JSON: {_json_error(exc)}; rows after this point were not read"
        yield RawRow(file, exc.lineno, None, Problem(file, exc.lineno, None, msg, "invalid_json"))
        return
    if count == 0:
        raise _empty(path)


def _is_json_lines(text: str, decoder: json.JSONDecoder) -> bool:
    """True when the text is one JSON object followed by more on later lines."""
    pos = _skip_ws(text, 0)
    if not text.startswith("{", pos):
        return False
    try:
        _, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError:
        return False
    rest = _skip_ws(text, end)
    return rest < len(text) and "\n" in text[end:rest]


def _json_elements(path: Path, text: str, decoder: json.JSONDecoder) -> Iterator[tuple[int, Any]]:
    """(offset, value) of each row of a .json file: a top-level array, or the one list of an object."""
    pos = _skip_ws(text, 0)
    if pos == len(text):
        raise _empty(path)
    if text.startswith("[", pos):
        end = yield from _walk_array(text, pos, decoder)
        _extra_data(text, end)
        return
    if not text.startswith("{", pos):
        value, end = decoder.raw_decode(text, pos)
        _extra_data(text, end)
        raise TunelabError(
            f'{path}: expected a JSON array of objects (or an object holding one, like {{"data": [...]}}), '
            f"got {type_name(value)}"
        )
    fields, end = _object_fields(text, pos, decoder)
    _extra_data(text, end)
    lists = [(key, start) for key, start, value in fields if isinstance(value, list)]
    if len(lists) == 1 and lists[0][0] not in _RECORD_LIST_FIELDS:
        yield from _walk_array(text, lists[0][1], decoder)
    elif not lists or any(key in _RECORD_LIST_FIELDS for key, _ in lists):
        yield pos, {key: value for key, _, value in fields}
    else:
        raise TunelabError(
            f'{path}: a top-level JSON object must hold exactly one list of rows, like {{"data": [...]}}; '
            f"found lists under: {', '.join(key for key, _ in lists)}"
        )


# -- CSV / TSV ---------------------------------------------------------------------------------------
def _iter_csv(path: Path, delimiter: str, max_line_bytes: int) -> Iterator[RawRow]:
    """Rows of a CSV/TSV file with a header; values are strings, an empty cell is a missing field.

    Physical lines are decoded one by one before the csv module sees them, so a non-UTF-8 or
    oversized line becomes a problem on the record that contains it instead of ending the file.
    """
    file = str(path)
    flagged: dict[int, Problem] = {}
    # A quoted field may span lines; the csv module's own cap would stop long-but-allowed fields.
    csv.field_size_limit(max(csv.field_size_limit(), max_line_bytes))
    with open(path, "rb") as fh:
        # strict: a quote closing mid-value ('"a"b') is an error, not silently the value 'ab'.
        reader = csv.reader(_csv_lines(fh, file, max_line_bytes, flagged), delimiter=delimiter, strict=True)
        header = _csv_header(path, reader, flagged)
        prev = reader.line_num
        count = 0
        while True:
            try:
                cells: list[str] | csv.Error = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                cells = exc
            start, prev = prev + 1, reader.line_num
            if isinstance(cells, csv.Error) and _runaway(cells):
                raise _unclosed_quote(file, start, prev, delimiter, cells) from None
            item = _csv_row(file, start, prev, cells, header, flagged, delimiter)
            if item is not None:
                count += 1
                yield item
    if count == 0:
        raise _empty(path)


def _csv_row(
    file: str,
    start: int,
    end: int,
    cells: list[str] | csv.Error,
    header: list[str],
    flagged: dict[int, Problem],
    delimiter: str,
) -> RawRow | None:
    """The RawRow for the record on physical lines start..end, or None for a blank line."""
    bad = [flagged.pop(n) for n in range(start, end + 1) if n in flagged]
    if bad:
        return RawRow(file, bad[0].line, None, bad[0])
    span = f" (lines {start}-{end} read as one record: a quote that closes too late?)" if end > start else ""
    if isinstance(cells, csv.Error):
        msg = f"malformed {_kind(delimiter)} record: {cells}{span}"
        return RawRow(file, start, None, Problem(file, start, None, msg, "invalid_csv"))
    if not any(cells):
        return None
    if len(cells) != len(header):
        hint = span or (
            " (an unquoted delimiter inside a value?)" if len(cells) > len(header) else " (a missing delimiter?)"
        )
        values = f"{len(cells)} value" + ("s" if len(cells) != 1 else "")
        msg = f"record has {values} but the header has {len(header)} columns{hint}"
        return RawRow(file, start, None, Problem(file, start, None, msg, "invalid_csv"))
    return RawRow(file, start, {h: v for h, v in zip(header, cells, strict=True) if v != ""}, None)


def _runaway(exc: csv.Error) -> bool:
    """True for the csv module's errors that mean a quoted value ran on to the end of the file (strict
    mode's end-of-data error) or past the field size limit: nothing after it can be told apart."""
    return str(exc).startswith(("unexpected end of data", "field larger than field limit"))


def _unclosed_quote(file: str, start: int, end: int, delimiter: str, exc: csv.Error) -> TunelabError:
    where = (
        f"runs on to the end of the file (line {end})"
        if str(exc).startswith("unexpected end of data")
        else f"is still open at line {end}, past the {csv.field_size_limit()}-character limit on one value"
    )
    return TunelabError(
        f"{file}:{start}: a quoted {_kind(delimiter)} value opens on this line and never closes: it {where}, "
        "which would swallow the records after it. Close the quote "
        '(a quote inside a quoted value is written twice: "")'
    )


def _kind(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def _csv_lines(fh: BinaryIO, file: str, max_line_bytes: int, flagged: dict[int, Problem]) -> Iterator[str]:
    for lineno, raw, offset, length in _binary_lines(fh, max_line_bytes):
        if raw is None:
            flagged[lineno] = _too_long(file, lineno, length, max_line_bytes)
            yield "\n"
            continue
        text = _decode(file, lineno, raw, offset)
        if isinstance(text, Problem):
            flagged[lineno] = text
            text = raw.decode("utf-8", "replace")
        yield text


def _csv_header(path: Path, reader: Any, flagged: dict[int, Problem]) -> list[str]:
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            raise _empty(path) from None
        except csv.Error as exc:
            raise TunelabError(f"{path}: the header row cannot be read: {exc}") from None
        if flagged:
            raise TunelabError(
                f"{path}: the header row cannot be read: {next(iter(flagged.values())).message}"
            )
        if not any(cells):
            continue
        header = [c.strip() for c in cells]
        missing = [str(i + 1) for i, name in enumerate(header) if not name]
        if missing:
            raise TunelabError(
                f"{path}: header column(s) {', '.join(missing)} have no name; name every column"
            )
        dupes = sorted({name for name in header if header.count(name) > 1})
        if dupes:
            raise TunelabError(f"{path}: duplicate header column(s): {', '.join(dupes)}")
        return header


# -- Parquet and saved datasets ----------------------------------------------------------------------
def _iter_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = str(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise TunelabError(f"{path} is not a readable Parquet file: {exc}") from None
    if pf.metadata.num_rows == 0:
        raise _empty(path)
    n = 0
    for batch in pf.iter_batches(batch_size=_BATCH):
        for row in batch.to_pylist():
            n += 1
            yield RawRow(file, n, row, None, "row")


def _iter_feedback(path: Path) -> Iterator[RawRow]:
    """A server's feedback database (tunelab.data.feedback) as preference rows, one per feedback entry
    that names a preferred answer; entries that give no pair are counted by prepare, not read as rows."""
    from .feedback import preference_rows

    rows, skipped = preference_rows(path)
    if not rows:
        raise TunelabError(f"{path}: no feedback with a preferred answer yet ({skipped or 'no feedback'}); "
                           "a rating alone is not a preference pair")
    for n, row in rows:
        yield RawRow(str(path), n, row, None, "row")


def _iter_hf(path: Path, split: str | None) -> Iterator[RawRow]:
    import datasets

    file = str(path)
    try:
        ds = datasets.load_from_disk(file)
    except Exception as exc:  # datasets raises many types for a damaged directory; all mean the same here
        raise TunelabError(f"{path}: cannot load the saved dataset: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        name = split or "train"
        if name not in ds:
            raise TunelabError(
                f"{path} has no split '{name}'; splits: {', '.join(ds)}; pick one with split=NAME"
            )
        ds = ds[name]
    elif split is not None:
        raise TunelabError(f"{path} is a single dataset without splits; drop split='{split}'")
    if len(ds) == 0:
        raise _empty(path)
    n = 0
    for batch in ds.iter(batch_size=_BATCH):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            n += 1
            yield RawRow(file, n, dict(zip(columns, values, strict=True)), None, "row")

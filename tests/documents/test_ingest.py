"""Ingestion: one real small file per format, made here, and every kind of file that must be skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunelab.documents.ingest import ingest
from tunelab.errors import TunelabError

MARKDOWN = """---
title: Travel Policy
owner: finance
---
Intro before any heading.

# Travel

Book trains in **Concur**.

## Hotels

Up to £120 a night in London.

```python
# not a heading: inside a code fence
x = 1
```

Setext heading
--------------

Under the setext heading.

### Deep `code` heading

Deepest text.

# Second top

Top two.
"""

HTML = """<!doctype html><html><head><title>IT Guide</title><style>p {color: red}</style></head>
<body><script>var hidden = "script text";</script>
<h1>IT Guide</h1><p>Call the   helpdesk
on 4455.</p>
<h2>Passwords</h2><ul><li>At least 14 characters.</li><li>Change them yearly.</li></ul>
<h3>Resets</h3><p>Line one<br>line two</p>
<table><tr><th>System</th><th>Owner</th></tr><tr><td>Keystone</td><td>HR</td></tr></table>
<!-- a comment that is not text -->
<h2>Laptops</h2><div>Encrypted with <b>BitLocker</b>.</div>
</body></html>"""


def write_pdf(path: Path, pages: list[list[str]]) -> None:
    """A minimal valid PDF with a Helvetica text object per page (pypdf extracts its text)."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    n = len(pages)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        content = "BT /F1 12 Tf 72 720 Td 16 TL " + " ".join(f"({esc(x)}) Tj T*" for x in lines) + " ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(content)} >>\nstream\n{content}\nendstream".encode())
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)


def write_docx(path: Path) -> None:
    import docx

    d = docx.Document()
    d.core_properties.title = ""
    d.add_paragraph("Benefits Guide", style="Title")
    d.add_paragraph("Everything about pay.")
    d.add_heading("Pension", level=1)
    d.add_paragraph("We match up to 6%.")
    d.add_paragraph("Salary sacrifice available", style="List Bullet")
    d.add_heading("Opting out", level=2)
    d.add_paragraph("Tell payroll within a month.")
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Plan", "Rate"
    table.cell(1, 0).text, table.cell(1, 1).text = "Standard", "5%"
    d.save(path)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "travel.md").write_text(MARKDOWN, encoding="utf-8")
    (root / "sub" / "notes.txt").write_text("Plain notes.\r\n\r\nSecond paragraph.\r\n", encoding="utf-8")
    (root / "it.html").write_text(HTML, encoding="utf-8")
    write_docx(root / "benefits.docx")
    write_pdf(root / "report.pdf", [["Quarterly report", "Revenue grew 12%."], ["Second page text."]])
    (root / "empty.md").write_text("", encoding="utf-8")
    (root / "blank.txt").write_text("  \n\n \t\n", encoding="utf-8")
    (root / "data.xyz").write_text("what is this", encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "broken.docx").write_bytes(b"this is not a zip file")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\ngarbage")
    write_pdf(root / "scan.pdf", [[]])  # a page with no text layer, like a scan
    (root / "gone.md").symlink_to(root / "does-not-exist.md")
    (root / ".hidden.md").write_text("# secret", encoding="utf-8")
    return root


def test_every_format_is_read_with_headings(docs: Path):
    result = ingest(docs)
    by_path = {d.path: d for d in result.documents}
    assert list(by_path) == sorted(by_path) == ["benefits.docx", "it.html", "report.pdf", "sub/notes.txt", "travel.md"]

    md = by_path["travel.md"]
    assert md.title == "Travel Policy"  # from the front matter
    assert [s.heading for s in md.sections] == [
        (),
        ("Travel",),
        ("Travel", "Hotels"),
        ("Travel", "Setext heading"),
        ("Travel", "Setext heading", "Deep code heading"),
        ("Second top",),
    ]
    assert "owner: finance" not in "".join(s.text for s in md.sections)
    hotels = md.sections[2].text
    assert "# not a heading" in hotels and "£120" in hotels

    html = by_path["it.html"]
    assert html.title == "IT Guide"
    assert [s.heading for s in html.sections] == [
        ("IT Guide",), ("IT Guide", "Passwords"), ("IT Guide", "Passwords", "Resets"), ("IT Guide", "Laptops")]
    assert html.sections[0].text == "Call the helpdesk on 4455."
    assert html.sections[1].text == "- At least 14 characters.\n\n- Change them yearly."
    assert html.sections[2].text == "Line one\nline two\n\nSystem | Owner\n\nKeystone | HR"
    assert "script text" not in html.text and "color" not in html.text and "comment" not in html.text

    dx = by_path["benefits.docx"]
    assert dx.title == "Benefits Guide"
    assert [s.heading for s in dx.sections] == [
        ("Benefits Guide",), ("Pension",), ("Pension", "Opting out")]
    assert dx.sections[1].text == "We match up to 6%.\n\n- Salary sacrifice available"
    assert dx.sections[2].text.endswith("Plan | Rate\n\nStandard | 5%")

    pdf = by_path["report.pdf"]
    assert [s.heading for s in pdf.sections] == [("page 1",), ("page 2",)]
    assert "Revenue grew 12%." in pdf.sections[0].text and pdf.sections[1].text == "Second page text."

    txt = by_path["sub/notes.txt"]
    assert txt.sections[0].text == "Plain notes.\n\nSecond paragraph."  # CRLF normalised
    for doc in result.documents:
        for s in doc.sections:
            assert doc.text[s.start : s.end] == s.text
        assert len(doc.sha256) == 64


def test_bad_files_are_reported_by_name_and_reason(docs: Path):
    skipped = {s.path: s.reason for s in ingest(docs).skipped}
    assert skipped["empty.md"] == "empty file"
    assert skipped["blank.txt"] == "no text in file"
    assert skipped["data.xyz"].startswith("unsupported file type '.xyz'")
    assert "not valid UTF-8" in skipped["latin1.txt"]
    assert skipped["broken.docx"].startswith("could not be parsed as DOCX")
    assert skipped["broken.pdf"].startswith("could not be parsed as PDF (")
    assert skipped["gone.md"].startswith("cannot be read")
    assert skipped[".hidden.md"] == "hidden file, not read"
    assert skipped["scan.pdf"].startswith("no extractable text")
    assert len(skipped) == 9


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_skipped(tmp_path: Path):
    f = tmp_path / "locked.md"
    f.write_text("# x\ny", encoding="utf-8")
    f.chmod(0)
    try:
        assert ingest(tmp_path).skipped[0].reason.startswith("cannot be read")
    finally:
        f.chmod(0o644)


def test_deterministic_and_file_lists(docs: Path):
    a, b = ingest(docs), ingest(docs)
    assert [(d.path, d.text, d.sections) for d in a.documents] == [(d.path, d.text, d.sections) for d in b.documents]
    # a list of files is relative to their common folder, so names never collide
    listed = ingest([docs / "sub" / "notes.txt", docs / "travel.md"])
    assert listed.root == docs.resolve()
    assert [d.path for d in listed.documents] == ["sub/notes.txt", "travel.md"]
    assert [d.path for d in ingest(docs / "travel.md").documents] == ["travel.md"]


def test_missing_path_is_an_error(tmp_path: Path):
    with pytest.raises(TunelabError, match="not found"):
        ingest(tmp_path / "nope")
    with pytest.raises(TunelabError, match="no document paths"):
        ingest([])


def test_setext_rule_after_list_is_not_a_heading(tmp_path: Path):
    (tmp_path / "a.md").write_text("# A\n\n- item one\n---\n\nText after the rule.\n", encoding="utf-8")
    doc = ingest(tmp_path).documents[0]
    assert [s.heading for s in doc.sections] == [("A",)]
    assert doc.sections[0].text.endswith("Text after the rule.")

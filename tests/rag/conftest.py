"""RAG test fixtures: the real bundled MiniLM embedder (loaded once) and a small corpus with known answers."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = {
    "parking.md": "# Parking\n\n## Permits\n\nStaff car parking permits cost 15 pounds a month and are issued by "
                  "reception.\n\n## Bicycles\n\nThe bike shed is behind building B. Showers are on the ground floor.\n",
    "payroll.md": "# Payroll\n\n## Pay day\n\nSalaries are paid on the 25th of each month by bank transfer.\n\n"
                  "## Payslips\n\nPayslips are available in the Keystone portal from the 20th.\n",
    "security.md": "# Security\n\n## Passwords\n\nPasswords must have at least 14 characters and are changed every "
                   "year.\n\n## Phishing\n\nReport suspicious emails with the Report Phish button in Outlook.\n",
    "kitchen.md": "# Kitchen\n\nThe kitchen fridge is cleared every Friday at 4pm. Coffee beans are restocked on "
                  "Mondays.\n",
    "holidays.md": "# Holidays\n\nEmployees get 27 days of paid annual leave plus public holidays. Request leave "
                   "two weeks in advance.\n",
}

QUESTIONS = [
    ("How much does a parking permit cost?", "parking.md"),
    ("When are salaries paid?", "payroll.md"),
    ("How long must my password be?", "security.md"),
    ("When is the fridge emptied?", "kitchen.md"),
    ("How many vacation days do I get?", "holidays.md"),
    ("Where can I leave my bike?", "parking.md"),
    ("What should I do with a suspicious email?", "security.md"),
]


def write_corpus(root: Path, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (files or CORPUS).items():
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def minilm():
    from tunelab.rag.embedder import Embedder

    return Embedder("all-minilm-l6-v2")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "docs")


@pytest.fixture
def questions() -> list[tuple[str, str]]:
    return list(QUESTIONS)


@pytest.fixture
def write_docs():
    """write_docs(root, {name: text}) writes (or overwrites) files of a corpus."""
    return write_corpus

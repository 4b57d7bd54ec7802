"""PII scrubbing: every type is found where it is, and left alone where it only looks like it."""

from __future__ import annotations

import pytest

from tunelab.data.pii import PII_TYPES, iban_ok, luhn_ok, scrub_records, scrub_text
from tunelab.data.records import Record


def only(text: str) -> tuple[str, dict[str, int]]:
    out, counts = scrub_text(text)
    return out, dict(counts)


# --------------------------------------------------------------------------------------- positives
@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("Write to jane.doe+hr@example.co.uk today.", "Write to <EMAIL> today.", "EMAIL"),
        ("mail: J_Smith@mail-server.example.org", "mail: <EMAIL>", "EMAIL"),
        ("Call +1 (415) 555-2671 now", "Call <PHONE> now", "PHONE"),
        ("Call +44 20 7946 0958.", "Call <PHONE>.", "PHONE"),
        ("tel +33 6 12 34 56 78", "tel <PHONE>", "PHONE"),
        ("office (415) 555-2671", "office <PHONE>", "PHONE"),
        ("office 415-555-2671", "office <PHONE>", "PHONE"),
        ("toll free 1-800-555-0199", "toll free <PHONE>", "PHONE"),
        ("London 020 7946 0958", "London <PHONE>", "PHONE"),
        ("Paris 06 12 34 56 78", "Paris <PHONE>", "PHONE"),
        ("card 4111 1111 1111 1111 expires", "card <CARD> expires", "CARD"),
        ("card 4111-1111-1111-1111", "card <CARD>", "CARD"),
        ("card 5555555555554444", "card <CARD>", "CARD"),
        ("amex 3782 822463 10005", "amex <CARD>", "CARD"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN <IBAN> please", "IBAN"),
        ("IBAN DE89370400440532013000", "IBAN <IBAN>", "IBAN"),
        ("GB82 WEST 1234 5698 7654 32 AND THEN", "<IBAN> AND THEN", "IBAN"),
        ("server 192.168.1.10.", "server <IP>.", "IP"),
        ("gateway 0.0.0.0 and 255.255.255.255", "gateway <IP> and <IP>", "IP"),
        ("v6 2001:db8::8a2e:370:7334 here", "v6 <IP> here", "IP"),
        ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "full <IP>", "IP"),
        ("loopback ::1 and fe80::1", "loopback <IP> and <IP>", "IP"),
        ("SSN 123-45-6789.", "SSN <NATIONAL_ID>.", "NATIONAL_ID"),
        ("NI number QQ 12 34 56 C", "NI number <NATIONAL_ID>", "NATIONAL_ID"),
        ("NI AB123456D", "NI <NATIONAL_ID>", "NATIONAL_ID"),
    ],
)
def test_detects(text: str, expected: str, kind: str) -> None:
    out, counts = only(text)
    assert out == expected
    assert set(counts) == {kind}
    assert counts[kind] == expected.count(f"<{kind}>")


# --------------------------------------------------------------------------------------- negatives
@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "order 1234567812345678 fails Luhn",
        "bad IBAN DE89 3704 0044 0532 0130 01",
        "bad IBAN GB82 WEST 1234 5698 7654 33",
        "not an IP 999.1.1.1",
        "not an IP 256.1.1.1 or 1.2.3.4.5",
        "leading zeros 01.02.03.04",
        "time 12:30:45 and mac 00:1A:2B:3C:4D:5E",
        "C++ std::vector and Foo::bar",
        "date 2023-01-15 and 15.01.2023 and 01/02/2023",
        "timestamp 2023-01-15 12:30:45",
        "years 1999, 2000 and 2024",
        "amounts $1,234,567.89 and 1 000 000 and 123456789",
        "currency $0123456789",
        "scores 1 2 3 4 5 6 7 8 9 10 11 12 13",
        "short 555-1234",
        "ISBN 978-3-16-148410-0",
        "SSN never issued 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000",
        "NI never issued BG123456C and DA123456C",
        "an email-like thing user@localhost",
        "Arabic-Indic digits ٤١١١١١١١١١١١١١١١",
        "version 2.0 build 17",
    ],
)
def test_leaves_alone(text: str) -> None:
    assert only(text) == (text, {})


def test_several_kinds_in_one_text() -> None:
    out, counts = only("Jane (jane@example.com, +1 415 555 2671) paid with 4111 1111 1111 1111 from 10.0.0.1")
    assert out == "Jane (<EMAIL>, <PHONE>) paid with <CARD> from <IP>"
    assert counts == {"EMAIL": 1, "PHONE": 1, "CARD": 1, "IP": 1}


def test_placeholders_are_stable_under_a_second_pass() -> None:
    once, _ = scrub_text("mail a@b.io, call +44 20 7946 0958, SSN 123-45-6789")
    twice, counts = scrub_text(once)
    assert twice == once and not counts


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE88370400440532013000")
    assert not iban_ok("DE89")


def test_scrub_records_counts_every_type_and_keeps_labels() -> None:
    records = [
        Record(
            kind="chat",
            messages=[{"role": "user", "content": "I am a@b.com"}, {"role": "assistant", "content": "ok"}],
        ),
        Record(kind="label", text="call 415-555-2671", label="a@b.com", meta={"file": "x.jsonl", "line": 2}),
    ]
    out, counts = scrub_records(records)
    assert set(counts) == set(PII_TYPES)
    assert counts["EMAIL"] == 1 and counts["PHONE"] == 1 and counts["CARD"] == 0
    assert out[0].messages[0]["content"] == "I am <EMAIL>"
    assert out[1].text == "call <PHONE>"
    assert out[1].label == "a@b.com"  # labels are class names, never scrubbed
    assert out[1].meta == {"file": "x.jsonl", "line": 2}
    assert records[0].messages[0]["content"] == "I am a@b.com"  # input untouched

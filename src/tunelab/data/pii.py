"""PII scrubbing: replace personal data with typed placeholders ("<EMAIL>", "<PHONE>", ...).

Detectors are regular expressions followed, where a checksum exists, by validation, so that a number
is only called a card or an IBAN when it really could be one. They run in a fixed order, most specific
first (an IBAN contains digit runs a card or phone pattern would also match), and a placeholder holds no
digits, so a later detector never re-matches it.

False-positive / false-negative trade-offs, chosen for training data (better to mask a little too much
than to leak; but never mask plain numbers, dates and amounts, which carry the content):

- EMAIL: ASCII and Unicode local parts and domains; the domain needs a dot and a top-level domain of
  letters (so "user@localhost" stays). Obfuscated forms ("name at example dot com") are not detected.
- PHONE: "+" international numbers (9-15 digits, E.164's limit), North American numbers with an area
  code ("(415) 555-2671", "415-555-2671") and trunk-prefixed national numbers ("020 7946 0958",
  "06 12 34 56 78"). An unseparated run of digits that does not start with 0 or + is NOT a phone
  (it is more often an id or an amount), nor is anything shaped like a date or preceded by a currency
  sign. Consequence: a bare "4155552671" stays; a ten-digit order number starting with 0 is masked.
- CARD: 13-19 digits, optionally grouped by spaces or dashes, that pass the Luhn check. One random
  digit string in ten passes Luhn, so long numeric ids (e.g. IMEIs, which use Luhn too) can be masked.
- IBAN: country code, check digits and 11-30 alphanumerics, upper case, compact or in groups, valid
  under ISO 7064 mod 97-10. A bad checksum is never masked.
- IP: IPv4 with every octet <= 255 and no leading zeros, not glued to other digits or dots (so
  "999.1.1.1" and "1.2.3.4.5" are not IPs); IPv6 validated by the stdlib `ipaddress`. A four-part
  version number such as "1.2.3.4" is indistinguishable from an IP and is masked.
- NATIONAL_ID: US SSNs written ddd-dd-dddd (areas 000, 666 and 900-999, group 00 and serial 0000 are
  never issued and are not matched; undashed nine-digit numbers are too ambiguous to mask), and UK
  National Insurance numbers ("AB 12 34 56 C"; prefixes that are never issued are excluded, except
  HMRC's specimen prefix QQ, which turns up in copied forms), upper case.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Sequence

from .records import Record

PII_TYPES = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "NATIONAL_ID")


def placeholder(kind: str) -> str:
    return f"<{kind}>"


# ------------------------------------------------------------------------------------- validators
def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(compact: str) -> bool:
    """ISO 7064 mod 97-10: move the first four characters to the end, letters -> 10..35, remainder 1."""
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# --------------------------------------------------------------------------------------- patterns
# Patterns that need digits are ASCII-only (Unicode \d would let Arabic-Indic digits into the Luhn and
# mod-97 arithmetic) and, where possible, start with a plain character class and test the character
# before the match in a lookbehind placed AFTER that first character: a pattern that begins with a
# lookbehind disables the regex engine's first-character scan and measured 5-10x slower.
_A = re.ASCII
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,24}(?![\w-])")
_IBAN = re.compile(r"[A-Z](?<![A-Za-z0-9_][A-Z])[A-Z][0-9][0-9](?: ?[A-Z0-9]){11,30}\b", _A)
# Contiguous, or in groups of 3-6 after a first group of 4 (4-4-4-4, 4-6-5, 4-4-4-4-3): lists of
# small spaced numbers ("1 2 3 4 5 6 7 8 9 10 11") are not cards even when they happen to pass Luhn.
_CARD = re.compile(r"[0-9](?<![0-9+-][0-9])(?:[0-9]{12,18}|[0-9]{3}(?:[ -][0-9]{3,6}){2,4})(?![0-9-])", _A)
_SSN = re.compile(r"[0-9](?<![0-9-][0-9])[0-9]{2}-[0-9]{2}-[0-9]{4}(?![0-9-])", _A)
_NINO = re.compile(r"[A-Z](?<![A-Za-z0-9_][A-Z])[A-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b", _A)
_IPV4 = re.compile(r"[0-9](?<![\w.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?!\.?\w)", _A)
# One bounded character class (no nested stars, which backtrack cubically on long hex dumps); the
# callback checks the colons and lets `ipaddress` decide.
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:.]{2,45}(?![\w:.])", _A)
_PHONE_INTL = re.compile(
    r"\+(?<![\w+]\+)(?<![0-9][ .-]\+)[0-9]{1,3}(?:[ .-]?(?:\([0-9]{1,5}\)|[0-9]{1,5})){1,6}(?!\w|[.-][0-9])",
    _A,
)
_PHONE_NANP = re.compile(
    r"(?<![\w+.-])(?<![0-9][ .-])(?:1[ .-])?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])"
    r"[0-9]{3}[ .-][0-9]{4}(?!\w|[.-][0-9])",
    _A,
)
_PHONE_TRUNK = re.compile(
    r"(?<![\w+.,-])(?<![0-9][ .-])(?:\(0[1-9][0-9]{0,3}\) ?|0[1-9][0-9]{0,3}|00[1-9][0-9]{0,2})"
    r"(?:[ .-]?[0-9]{2,4}){2,4}(?!\w|[.,-][0-9])",
    _A,
)
_DATE_LIKE = re.compile(
    r"\b[0-9]{1,2}[./-][0-9]{1,2}[./-][0-9]{2,4}\b|\b[0-9]{4}[./-][0-9]{1,2}[./-][0-9]{1,2}\b"
)
_CURRENCY = "$€£¥₹"
_ASCII_DIGITS = "0123456789"
# UK NINO letters: the first is never D, F, I, Q, U, V; the second never D, F, I, O, Q, U, V.
_NINO_FIRST = frozenset("ABCEGHJKLMNOPRSTWXYZ")
_NINO_SECOND = frozenset("ABCEGHJKLMNPRSTWXYZ")
_NINO_NEVER = frozenset(("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"))


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch in _ASCII_DIGITS)


# Each replacer returns the replacement for one regex match, or the match unchanged when the match
# fails validation (so the next detector still sees it).
def _replace_card(m: re.Match[str]) -> str:
    digits = _digits(m.group())
    return placeholder("CARD") if 13 <= len(digits) <= 19 and luhn_ok(digits) else m.group()


def _replace_iban(m: re.Match[str]) -> str:
    # The pattern is greedy and may swallow a following upper-case word or number group; try dropping
    # trailing space-separated groups before giving up.
    text = m.group()
    groups = text.split(" ")
    for end in range(len(groups), 0, -1):
        compact = "".join(groups[:end])
        if len(compact) < 15:
            break
        if iban_ok(compact):
            rest = " ".join(groups[end:])
            return placeholder("IBAN") + (" " + rest if rest else "")
    return text


def _replace_ssn(m: re.Match[str]) -> str:
    area, group, serial = m.group().split("-")
    never_issued = area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000"
    return m.group() if never_issued else placeholder("NATIONAL_ID")


def _replace_nino(m: re.Match[str]) -> str:
    prefix = m.group()[:2]
    valid = prefix == "QQ" or (
        prefix[0] in _NINO_FIRST and prefix[1] in _NINO_SECOND and prefix not in _NINO_NEVER
    )
    return placeholder("NATIONAL_ID") if valid else m.group()


def _replace_ipv4(m: re.Match[str]) -> str:
    octets = m.group().split(".")
    if all(int(o) <= 255 and (o == "0" or not o.startswith("0")) for o in octets):
        return placeholder("IP")
    return m.group()


def _replace_ipv6(m: re.Match[str]) -> str:
    core = m.group().rstrip(".")  # a sentence may end right after the address
    if core.count(":") < 2:
        return m.group()
    try:
        ipaddress.IPv6Address(core)
    except ValueError:
        return m.group()
    return placeholder("IP") + m.group()[len(core) :]


def _phone_validator(min_digits: int) -> Callable[[re.Match[str]], str]:
    def replace(m: re.Match[str]) -> str:
        text = m.group()
        n = len(_digits(text))
        if not min_digits <= n <= 15 or _DATE_LIKE.search(text):
            return text
        if m.start() > 0 and m.string[m.start() - 1] in _CURRENCY:
            return text
        return placeholder("PHONE")

    return replace


_Replacement = Callable[[re.Match[str]], str]
# (kind, pattern, replacer, gate(text, number of ASCII digits in it)): the gate is a cheap necessary
# condition, so most texts skip most patterns.
_DETECTORS: list[tuple[str, re.Pattern[str], _Replacement, Callable[[str, int], bool]]] = [
    ("EMAIL", _EMAIL, lambda m: placeholder("EMAIL"), lambda s, d: "@" in s),
    ("IBAN", _IBAN, _replace_iban, lambda s, d: d >= 8),
    ("CARD", _CARD, _replace_card, lambda s, d: d >= 13),
    ("NATIONAL_ID", _SSN, _replace_ssn, lambda s, d: d >= 9 and "-" in s),
    ("NATIONAL_ID", _NINO, _replace_nino, lambda s, d: d >= 6),
    ("IP", _IPV4, _replace_ipv4, lambda s, d: d >= 4 and "." in s),
    ("IP", _IPV6, _replace_ipv6, lambda s, d: "::" in s or s.count(":") >= 7),
    ("PHONE", _PHONE_INTL, _phone_validator(9), lambda s, d: d >= 9 and "+" in s),
    ("PHONE", _PHONE_NANP, _phone_validator(10), lambda s, d: d >= 10),
    ("PHONE", _PHONE_TRUNK, _phone_validator(9), lambda s, d: d >= 9),
]


def scrub_text(s: str) -> tuple[str, Counter]:
    """Replace every detected PII span with its typed placeholder; returns the text and counts by type."""
    counts: Counter = Counter()
    has_digit = any(d in s for d in _ASCII_DIGITS)
    # Without digits only an e-mail address or an IPv6 address ("fe::ab") is possible.
    if not has_digit and "@" not in s and "::" not in s:
        return s, counts
    n_digits = sum(map(s.count, _ASCII_DIGITS)) if has_digit else 0
    for kind, pattern, repl, gate in _DETECTORS:
        if gate(s, n_digits):
            s, n = _sub_counting(pattern, repl, s, kind)
            if n:
                counts[kind] += n
    return s, counts


def _sub_counting(pattern: re.Pattern[str], repl: _Replacement, s: str, kind: str) -> tuple[str, int]:
    """re.sub, counting only the matches that were actually replaced by the placeholder."""
    token = placeholder(kind)
    replaced = 0

    def wrapped(m: re.Match[str]) -> str:
        nonlocal replaced
        out = repl(m)
        if out.startswith(token):
            replaced += 1
        return out

    return pattern.sub(wrapped, s), replaced


def scrub_records(records: Sequence[Record]) -> tuple[list[Record], dict[str, int]]:
    """Scrub every text of every record; returns the new records and the number of spans per PII type."""
    total: Counter = Counter()

    def fn(s: str) -> str:
        out, counts = scrub_text(s)
        total.update(counts)
        return out

    scrubbed = [rec.map_texts(fn) for rec in records]
    return scrubbed, {kind: total.get(kind, 0) for kind in PII_TYPES}

"""The tracker's view of secret redaction, which lives below every stage in tunelab.secrets."""

from __future__ import annotations

from ..secrets import (
    MASK,
    Redactor,
    env_secrets,
    is_secret_key,
    known_secrets,
    redact,
    redact_file,
    redact_text,
    register_secret,
    secrets_in,
)

__all__ = ["MASK", "Redactor", "env_secrets", "is_secret_key", "known_secrets", "redact", "redact_file",
           "redact_text", "register_secret", "secrets_in"]

"""Data stage: read user datasets in common formats, validate, clean, deduplicate, scrub PII, split,
and render them for a model with a correct loss mask."""

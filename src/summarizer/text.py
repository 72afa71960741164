"""Text normalization shared by the ingest stage and inference: a text is summarized as it was trained on."""

from __future__ import annotations

import unicodedata


def normalize_text(text: str) -> str:
    """NFKC, whitespace collapsed within lines; line breaks kept as paragraph breaks, blank lines dropped."""
    lines = (" ".join(line.split()) for line in unicodedata.normalize("NFKC", text).splitlines())
    return "\n".join(line for line in lines if line)


def normalize_summary(summary: str) -> str:
    """NFKC and all whitespace, line breaks included, collapsed to single spaces."""
    return " ".join(unicodedata.normalize("NFKC", summary).split())


def first_words(text: str, num_words: int) -> str:
    """The text's first ``num_words`` whitespace-separated words: the lead baseline."""
    return " ".join(text.split()[:num_words])

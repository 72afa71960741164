"""Normalization shared by ingest and inference, and the lead baseline's first words."""

from summarizer.text import first_words, normalize_summary, normalize_text


def test_normalize_text_applies_nfkc_collapses_whitespace_and_keeps_paragraphs() -> None:
    raw = "\ufb01le\u00a0 name\t\tＡＢＣ \r\n\r\n   second   paragraph \u2028third\n\n"
    assert normalize_text(raw) == "file name ABC\nsecond paragraph\nthird"


def test_normalize_summary_is_one_line() -> None:
    assert normalize_summary("  a\n b\u00a0\u00a0c\r\n") == "a b c"


def test_first_words_split_on_any_whitespace() -> None:
    assert first_words("one two  three\nfour five", 4) == "one two three four"
    assert first_words("solo", 3) == "solo" and first_words("", 1) == ""

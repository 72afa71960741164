"""The shared sentencepiece tokenizer: special ids, round trips, shared vocabulary, reproducibility."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import sentencepiece

from summarizer.config import AUTO_VOCAB_SIZE, TokenizeConfig
from summarizer.tokenization import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    count_lines,
    read_pairs,
    sample_lines,
    train_tokenizer,
)
from tests.conftest import make_pairs
from tests.helpers import write_ingested_split

SUMMARY_ONLY_WORD = "ñandú"  # its letters ñ and ú occur in no text


def corpus_pairs(count: int = 200) -> list[tuple[str, str]]:
    return [
        (text, f"{summary} {SUMMARY_ONLY_WORD}" if index % 4 == 0 else summary)
        for index, (text, summary) in enumerate(make_pairs(count))
    ]


CONFIG = TokenizeConfig(vocab_size=200, character_coverage=1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokenizer]:
    directory = tmp_path_factory.mktemp("tokenizer")
    train = write_ingested_split(directory / "train.jsonl", corpus_pairs())
    return directory, train_tokenizer(train, directory / "spm", CONFIG)


def test_special_ids_are_the_documented_ones(trained: tuple[Path, Tokenizer]) -> None:
    _, tokenizer = trained
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert [tokenizer.id_to_piece(piece_id) for piece_id in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tokenizer.vocab_size == 200
    encoded = tokenizer.encode_batch([text for text, _ in corpus_pairs()])
    assert not {PAD_ID, BOS_ID, EOS_ID} & {piece_id for ids in encoded for piece_id in ids}


def test_decode_of_encode_is_the_normalized_text(trained: tuple[Path, Tokenizer]) -> None:
    _, tokenizer = trained
    texts = [text for pair in corpus_pairs() for text in pair]
    assert [tokenizer.decode(tokenizer.encode(text)) for text in texts] == texts


def test_vocabulary_is_shared_so_a_summary_only_word_is_known(trained: tuple[Path, Tokenizer]) -> None:
    _, tokenizer = trained
    ids = tokenizer.encode(SUMMARY_ONLY_WORD)
    assert UNK_ID not in ids
    assert tokenizer.decode(ids) == SUMMARY_ONLY_WORD


def test_decode_stops_at_eos_and_skips_pad_and_bos(trained: tuple[Path, Tokenizer]) -> None:
    _, tokenizer = trained
    ids = tokenizer.encode("the daemon is maintained upstream.")
    assert tokenizer.decode([BOS_ID, *ids, EOS_ID, *tokenizer.encode("tool"), PAD_ID]) == (
        "the daemon is maintained upstream."
    )
    assert tokenizer.decode([BOS_ID, *ids[:2], PAD_ID, *ids[2:], PAD_ID, PAD_ID]) == tokenizer.decode(ids)
    assert tokenizer.decode([EOS_ID, *ids]) == ""


def test_decode_rejects_ids_outside_the_vocabulary(trained: tuple[Path, Tokenizer]) -> None:
    _, tokenizer = trained
    with pytest.raises(ValueError, match=r"token id 200 is outside the vocabulary \(0\.\.199\)"):
        tokenizer.decode([5, 200])


def test_encode_batch_equals_encode_one_by_one(trained: tuple[Path, Tokenizer]) -> None:
    _, tokenizer = trained
    texts = [summary for _, summary in corpus_pairs(30)]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(text) for text in texts]


def test_training_again_gives_the_same_model_bytes(trained: tuple[Path, Tokenizer], tmp_path: Path) -> None:
    directory, tokenizer = trained
    again = train_tokenizer(directory / "train.jsonl", tmp_path / "spm", CONFIG)
    assert (tmp_path / "spm.model").read_bytes() == (directory / "spm.model").read_bytes()
    vocab_lines = (tmp_path / "spm.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab_lines) == 200 and vocab_lines[0] == "<pad>\t0"
    assert (
        Tokenizer.load(tmp_path / "spm.model").encode("tool")
        == tokenizer.encode("tool")
        == again.encode("tool")
    )


def test_too_large_vocabulary_fails_naming_the_largest_size_allowed(tmp_path: Path) -> None:
    train = write_ingested_split(tmp_path / "train.jsonl", make_pairs(60))
    with pytest.raises(ValueError, match=r"tokenize\.vocab_size: 5000 is too large .* at most \d+") as raised:
        train_tokenizer(train, tmp_path / "spm", TokenizeConfig(vocab_size=5000))
    largest = int(re.search(r"at most (\d+)", str(raised.value)).group(1))
    assert 100 <= largest < 5000
    assert train_tokenizer(train, tmp_path / "spm", TokenizeConfig(vocab_size=largest)).vocab_size == largest


def test_auto_vocabulary_takes_the_largest_size_a_small_corpus_allows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = write_ingested_split(tmp_path / "train.jsonl", make_pairs(60))
    with pytest.raises(ValueError, match=r"at most (\d+)") as raised:
        train_tokenizer(train, tmp_path / "explicit", TokenizeConfig(vocab_size=AUTO_VOCAB_SIZE))
    largest = int(re.search(r"at most (\d+)", str(raised.value)).group(1))

    with caplog.at_level(logging.INFO, logger="summarizer.tokenization"):
        tokenizer = train_tokenizer(train, tmp_path / "auto", TokenizeConfig(vocab_size="auto"))

    assert tokenizer.vocab_size == largest < AUTO_VOCAB_SIZE
    assert f"auto: the corpus allows at most {largest} pieces, fewer than {AUTO_VOCAB_SIZE}" in caplog.text
    exact = train_tokenizer(train, tmp_path / "exact", TokenizeConfig(vocab_size=largest))
    assert (tmp_path / "auto.model").read_bytes() == (tmp_path / "exact.model").read_bytes()
    assert exact.vocab_size == largest


def test_malformed_records_are_named_by_file_line_and_field(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a b", "summary": "a"}\n{"text": "oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: malformed JSON"):
        train_tokenizer(bad_json, tmp_path / "spm", CONFIG)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"text": "a b"}\n', encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"missing\.jsonl: line 1: field 'summary' must be a string, got None"
    ):
        list(read_pairs(missing))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('\n{"text": "  ", "summary": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.jsonl: line 2: field 'text' is empty"):
        list(read_pairs(empty))


def test_training_sample_is_capped_seeded_and_uniform(tmp_path: Path) -> None:
    assert sample_lines(total_lines=900, max_records=1000, seed=1) is None
    sample = sample_lines(total_lines=5000, max_records=500, seed=1)
    assert sample == sample_lines(total_lines=5000, max_records=500, seed=1)
    assert len(sample) == 500 and min(sample) >= 1 and max(sample) <= 5000
    assert sum(line <= 2500 for line in sample) in range(200, 301)  # both halves of the file are sampled
    unterminated = tmp_path / "unterminated.jsonl"
    unterminated.write_bytes(b"a\nb\nc")
    assert count_lines(unterminated) == 3
    assert count_lines(write_ingested_split(tmp_path / "five.jsonl", make_pairs(5))) == 5


def test_training_uses_at_most_half_input_sentence_size_records(tmp_path: Path, caplog) -> None:
    train = write_ingested_split(tmp_path / "train.jsonl", make_pairs(1500))
    with caplog.at_level("INFO", logger="summarizer.tokenization"):
        train_tokenizer(train, tmp_path / "spm", TokenizeConfig(vocab_size=200, input_sentence_size=1000))
    assert "on 500 records of" in caplog.text


def test_load_rejects_a_model_with_other_special_ids(tmp_path: Path) -> None:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([text for text, _ in make_pairs(100)]),
        model_prefix=str(tmp_path / "other"),
        vocab_size=100,
        minloglevel=2,
    )  # sentencepiece's defaults: unk 0, bos 1, eos 2, no pad
    with pytest.raises(ValueError, match=r"other\.model: id 0 must be the special piece '<pad>'"):
        Tokenizer.load(tmp_path / "other.model")
    with pytest.raises(FileNotFoundError, match="sentencepiece model not found"):
        Tokenizer.load(tmp_path / "absent.model")

"""The shared sentencepiece model: training, loading, encoding and decoding.

One model is trained on the train split's texts **and** summaries: source and target share one vocabulary, so
the pointer-generator's copy attention maps a source position straight to an output id.

Special ids are fixed for every model trained here (``Tokenizer.load`` rejects a model that disagrees):

* ``PAD_ID = 0`` pads batches on the right (masks treat 0 as padding),
* ``UNK_ID = 1`` stands for pieces outside the vocabulary,
* ``BOS_ID = 2`` starts the decoder input; ``EOS_ID = 3`` ends a target.

``Tokenizer.encode`` never adds BOS or EOS: the TFRecord writer appends EOS to targets and the reader prepends
BOS to the decoder input.

Reproducibility: the same train split and config give a byte-identical ``spm.model``. Two things make it so.
The training sample is drawn here with a ``random.Random`` seeded by ``tokenize.seed``, because sentencepiece
0.2.3's own ``shuffle_input_sentence`` sampling differs between processes even after
``set_random_generator_seed`` (measured); and the trainer runs ``tokenize.num_threads`` threads, because
the unigram EM splits its sums by thread, so another thread count gives (slightly) different pieces.
"""

from __future__ import annotations

import io
import logging
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece

from summarizer.config import TokenizeConfig
from summarizer.ingested import Pair, read_pairs

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
SPECIAL_PIECES = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}

# sentencepiece skips longer training sentences (default 4192 bytes); a 400-word non-ASCII text can be longer.
MAX_SENTENCE_BYTES = 1 << 16
# Each sampled record gives two training sentences: its text and its summary.
SENTENCES_PER_RECORD = 2

logger = logging.getLogger(__name__)


def count_lines(path: str | Path) -> int:
    """The number of lines of a file, read in binary blocks (no JSON parsing)."""
    count = 0
    last_block = b""
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
            last_block = block
    return count + (1 if last_block and not last_block.endswith(b"\n") else 0)


def sample_lines(total_lines: int, max_records: int, seed: int) -> set[int] | None:
    """A seeded uniform sample of ``max_records`` 1-based line numbers, or None when every line fits."""
    if total_lines <= max_records:
        return None
    return {index + 1 for index in random.Random(seed).sample(range(total_lines), max_records)}


class _SentenceStream:
    """Texts and summaries of the sampled records, one at a time; remembers the first bad record.

    sentencepiece turns an exception raised inside its iterator into an opaque ``RuntimeError``, so the
    error is kept here and re-raised after training stops.
    """

    def __init__(self, pairs: Iterable[Pair]) -> None:
        self._pairs = pairs
        self.error: ValueError | None = None
        self.records = 0

    def __iter__(self) -> Iterator[str]:
        try:
            for pair in self._pairs:
                self.records += 1
                yield pair.text
                yield pair.summary
        except ValueError as error:
            self.error = error


_TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


def _training_error(
    error: RuntimeError, stream: _SentenceStream, path: Path, config: TokenizeConfig
) -> Exception:
    """A clear error for a failed sentencepiece run (the original record error first)."""
    if stream.error is not None:
        return stream.error
    largest = _largest_allowed(error)
    if largest is not None:
        return ValueError(
            f"tokenize.vocab_size: {config.vocab_size} is too large for the training corpus {path} "
            f"({stream.records} records used); sentencepiece allows at most {largest}. "
            "Lower tokenize.vocab_size in params.yaml (or set it to auto), or ingest more data."
        )
    if "smaller than required_chars" in str(error):
        return ValueError(
            f"tokenize.vocab_size: {config.vocab_size} cannot even hold the characters of {path}; "
            f"raise tokenize.vocab_size or lower tokenize.character_coverage ({error})"
        )
    return ValueError(f"sentencepiece could not train on {path}: {error}")


def _largest_allowed(error: RuntimeError) -> int | None:
    """The largest vocabulary sentencepiece says the corpus allows, if that is why training failed."""
    too_large = _TOO_LARGE.search(str(error))
    return int(too_large.group(2)) if too_large else None


def _write_vocab(path: Path, processor: sentencepiece.SentencePieceProcessor) -> None:
    """Write ``piece<TAB>score`` lines, the format of sentencepiece's own ``.vocab`` file."""
    with path.open("w", encoding="utf-8") as handle:
        for piece_id in range(processor.get_piece_size()):
            handle.write(f"{processor.id_to_piece(piece_id)}\t{processor.get_score(piece_id):g}\n")


def train_tokenizer(train_jsonl: str | Path, model_prefix: str | Path, config: TokenizeConfig) -> Tokenizer:
    """Train the shared sentencepiece model on a train split's texts and summaries.

    The file is streamed twice: once to count its lines, once to feed a seeded sample of at most
    ``config.input_sentence_size // 2`` records (two sentences each) to sentencepiece. Memory is bounded by
    that sample, whatever the file size. A number as ``vocab_size`` is a hard limit: a corpus too small for it
    fails (the model's embedding size must equal the vocabulary), naming the largest size it allows. With
    ``auto``, ``AUTO_VOCAB_SIZE`` pieces are asked for, and that largest size when the corpus is too small
    (sentencepiece trains a second time); the log says which.

    Returns:
        The trained tokenizer; ``{model_prefix}.model`` and ``{model_prefix}.vocab`` are written.

    Raises:
        ValueError: a record is malformed (file, line, field) or the vocabulary does not fit the corpus.
    """
    train_jsonl, model_prefix = Path(train_jsonl), Path(model_prefix)
    max_records = max(1, config.input_sentence_size // SENTENCES_PER_RECORD)
    chosen = sample_lines(count_lines(train_jsonl), max_records, config.seed)
    vocab_size = config.max_vocab_size
    try:
        model, records = _train_model(train_jsonl, chosen, vocab_size, config)
    except _SentencePieceError as failed:
        largest = _largest_allowed(failed.error)
        if config.vocab_size != "auto" or largest is None:
            raise _training_error(failed.error, failed.stream, train_jsonl, config) from None
        logger.info(
            "tokenize.vocab_size: auto: the corpus allows at most %d pieces, fewer than %d; training again",
            largest,
            vocab_size,
        )
        vocab_size = largest
        model, records = _train_model(train_jsonl, chosen, vocab_size, config)
    model_path = model_prefix.with_name(model_prefix.name + ".model")
    model_path.write_bytes(model)
    tokenizer = Tokenizer.load(model_path)
    _write_vocab(model_prefix.with_name(model_prefix.name + ".vocab"), tokenizer.processor)
    logger.info(
        "trained a %d-piece %s tokenizer on %d records of %s (tokenize.vocab_size: %s)",
        tokenizer.vocab_size,
        config.model_type,
        records,
        train_jsonl,
        config.vocab_size,
    )
    return tokenizer


class _SentencePieceError(Exception):
    """sentencepiece stopped: its error and the stream that fed it (which may hold a record error)."""

    def __init__(self, error: RuntimeError, stream: _SentenceStream) -> None:
        super().__init__(str(error))
        self.error, self.stream = error, stream


def _train_model(
    train_jsonl: Path, chosen: set[int] | None, vocab_size: int, config: TokenizeConfig
) -> tuple[bytes, int]:
    """One sentencepiece run with ``vocab_size`` pieces: the serialized model and the records it saw.

    Raises:
        ValueError: a malformed record. _SentencePieceError: sentencepiece refused (e.g. too many pieces).
    """
    stream = _SentenceStream(read_pairs(train_jsonl, chosen))
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(stream),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=config.model_type,
            character_coverage=config.character_coverage,
            input_sentence_size=config.input_sentence_size,
            shuffle_input_sentence=False,  # sampled above, reproducibly
            max_sentence_length=MAX_SENTENCE_BYTES,
            num_threads=config.num_threads,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_piece=SPECIAL_PIECES[PAD_ID],
            unk_piece=SPECIAL_PIECES[UNK_ID],
            bos_piece=SPECIAL_PIECES[BOS_ID],
            eos_piece=SPECIAL_PIECES[EOS_ID],
            hard_vocab_limit=True,
            minloglevel=1,
        )
    except RuntimeError as error:
        if stream.error is not None:
            raise stream.error from None
        raise _SentencePieceError(error, stream) from None
    if stream.error is not None:
        raise stream.error
    return model.getvalue(), stream.records


class Tokenizer:
    """A trained sentencepiece model with this project's fixed special ids."""

    def __init__(self, processor: sentencepiece.SentencePieceProcessor, source: str = "<memory>") -> None:
        for piece_id, piece in SPECIAL_PIECES.items():
            if processor.get_piece_size() <= piece_id or processor.id_to_piece(piece_id) != piece:
                raise ValueError(
                    f"{source}: id {piece_id} must be the special piece {piece!r}; "
                    "train the model with summarizer.tokenization.train_tokenizer"
                )
        self.processor = processor

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load ``spm.model``.

        Raises:
            FileNotFoundError: no such file. ValueError: its special ids differ from this module's.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {path}")
        return cls(sentencepiece.SentencePieceProcessor(model_file=str(path)), str(path))

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def id_to_piece(self, piece_id: int) -> str:
        self._check_id(piece_id)
        return self.processor.id_to_piece(piece_id)

    def encode(self, text: str) -> list[int]:
        """Piece ids of ``text``, without BOS or EOS."""
        return self.processor.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of each text (sentencepiece encodes the batch on several threads)."""
        return self.processor.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, read up to the first EOS; PAD and BOS are skipped.

        Raises:
            ValueError: an id is outside the vocabulary.
        """
        kept = []
        for value in ids:
            piece_id = int(value)
            if piece_id == EOS_ID:
                break
            if piece_id not in (PAD_ID, BOS_ID):
                self._check_id(piece_id)
                kept.append(piece_id)
        return self.processor.decode(kept)

    def _check_id(self, piece_id: int) -> None:
        if not 0 <= piece_id < self.vocab_size:
            raise ValueError(f"token id {piece_id} is outside the vocabulary (0..{self.vocab_size - 1})")


__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "SPECIAL_PIECES",
    "UNK_ID",
    "Tokenizer",
    "count_lines",
    "train_tokenizer",
]

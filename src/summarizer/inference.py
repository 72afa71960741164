"""A trained summarizer turned into summaries: texts in, summaries out.

:class:`SummarizerPipeline` loads a model directory (:mod:`summarizer.model_directory`), normalizes
texts the way the ingest stage does (:mod:`summarizer.text`), encodes them capped at ``max_source_tokens``
and decodes each batch with greedy or beam search inside ONE ``tf.function`` per batch size. Batches are
padded to a fixed shape, ``(batch_size, max_source_tokens)``, so every batch of a run reuses the same trace;
padding rows (copies of the batch's first text) are dropped from the result.

A summary is never empty: the searches ban EOS before ``min_length >= 1`` tokens, special and unknown ids are
dropped, and if the remaining pieces still decode to whitespace (a lone ``▁`` piece, say) the summary falls
back to the text's first word, its lead word.

The MLflow pyfunc packaging of this pipeline lives with tracking, in :mod:`summarizer.pyfunc`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from summarizer import model_directory
from summarizer.config import EvaluateConfig, params_from_dict
from summarizer.decoding import beam_search, greedy_search, tile_beams
from summarizer.losses import negative_log_likelihood
from summarizer.model_directory import SPECIAL_IDS, ModelSettings
from summarizer.text import first_words, normalize_summary, normalize_text
from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

DROPPED_IDS = frozenset(SPECIAL_IDS.values())


def decoding_config(decoding: EvaluateConfig | Mapping[str, Any] | None) -> EvaluateConfig:
    """An :class:`EvaluateConfig` from a config, a mapping of ``evaluate.*`` keys or None (the defaults).

    Raises:
        ConfigError: naming the ``evaluate.<key>`` that is unknown, mistyped or out of range.
    """
    if isinstance(decoding, EvaluateConfig):
        decoding.validate("evaluate")
        return decoding
    return params_from_dict({"evaluate": dict(decoding or {})}).evaluate


class SummarizerPipeline:
    """Texts in, summaries out, with a trained model, its tokenizer and decoding settings.

    Build it with :meth:`load`. ``decoding`` holds the search settings (``search``, ``beam_width``,
    ``length_penalty``, ``min_length``, ``max_length``, ``no_repeat_ngram_size``, ``batch_size``).
    """

    def __init__(
        self, model: keras.Model, tokenizer: Tokenizer, settings: ModelSettings, decoding: EvaluateConfig
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.decoding = decoding
        self._decoders: dict[int, tf.types.experimental.PolymorphicFunction] = {}
        self._log_probs_function = tf.function(
            self._teacher_forced_log_probs,
            input_signature=[tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None, None), tf.int32)],
        )

    @classmethod
    def load(
        cls, model_dir: str | Path, decoding: EvaluateConfig | Mapping[str, Any] | None = None
    ) -> SummarizerPipeline:
        """Load a model directory (:func:`summarizer.model_directory.load`) with these search settings.

        Raises:
            ConfigError: ``decoding`` has an unknown or out-of-range key (checked first).
            ModelDirectoryError: a file is missing or malformed.
        """
        decoding = decoding_config(decoding)
        model, tokenizer, settings = model_directory.load(model_dir)
        return cls(model, tokenizer, settings, decoding)

    def with_decoding(self, decoding: EvaluateConfig | Mapping[str, Any] | None) -> SummarizerPipeline:
        """The same model and tokenizer with other search settings (a new set of traces)."""
        return SummarizerPipeline(self.model, self.tokenizer, self.settings, decoding_config(decoding))

    # Encoding --------------------------------------------------------------------------------------------

    def source_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Normalized, encoded and capped source ids of each text.

        Raises:
            ValueError: a text is not a string or is empty after normalization (the message gives its index).
        """
        normalized = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text {index}: expected a string, got {type(text).__name__}")
            normalized.append(normalize_text(text))
            if not normalized[-1]:
                raise ValueError(f"text {index}: empty (only whitespace); nothing to summarize")
        # A text whose pieces sentencepiece drops entirely still gets one token to attend to.
        return [
            ids[: self.settings.max_source_tokens] or [UNK_ID]
            for ids in self.tokenizer.encode_batch(normalized)
        ]

    def target_ids(self, summary: str) -> list[int]:
        """Summary ids ending with EOS, capped at ``max_target_tokens`` as the TFRecord writer does."""
        return [*self.tokenizer.encode(normalize_summary(summary)), EOS_ID][: self.settings.max_target_tokens]

    # Decoding --------------------------------------------------------------------------------------------

    def _search(self, source_ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Encode and search one fixed-shape batch; traced once per batch size."""
        decoding = self.decoding
        batch_size = source_ids.shape[0]
        context, state = self.model.encode(source_ids)
        search_settings = {
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "pad_id": PAD_ID,
            "max_length": decoding.max_length,
            "min_length": decoding.min_length,
            "no_repeat_ngram_size": decoding.no_repeat_ngram_size,
        }
        if decoding.search == "greedy":
            result = greedy_search(
                lambda ids, step_state: self.model.decode_step(ids, step_state, context),
                state,
                batch_size,
                **search_settings,
            )
        else:
            beams = decoding.beam_width
            tiled_context = tile_beams(context, beams)
            result = beam_search(
                lambda ids, step_state: self.model.decode_step(ids, step_state, tiled_context),
                tile_beams(state, beams),
                batch_size,
                beam_width=beams,
                length_penalty=decoding.length_penalty,
                **search_settings,
            )
        return result.ids, result.lengths

    def decoder(self, batch_size: int) -> tf.types.experimental.PolymorphicFunction:
        """The traced search: source ids (batch_size, max_source_tokens) -> (ids, lengths); one per size."""
        if batch_size not in self._decoders:
            signature = [tf.TensorSpec((batch_size, self.settings.max_source_tokens), tf.int32)]
            self._decoders[batch_size] = tf.function(self._search, input_signature=signature, autograph=False)
        return self._decoders[batch_size]

    def _padded(self, rows: Sequence[Sequence[int]], batch_size: int) -> np.ndarray:
        """A (batch_size, max_source_tokens) array; missing rows repeat row 0, a harmless real input."""
        array = np.full((batch_size, self.settings.max_source_tokens), PAD_ID, dtype=np.int32)
        for index in range(batch_size):
            row = rows[index] if index < len(rows) else rows[0]
            array[index, : len(row)] = row
        return array

    def summary_of_ids(self, ids: Sequence[int], source_text: str) -> str:
        """The summary text of generated ids: special and unknown ids dropped, whitespace collapsed.

        Falls back to the source's lead word when the pieces decode to nothing but whitespace.
        """
        kept = [int(piece_id) for piece_id in ids if int(piece_id) not in DROPPED_IDS]
        text = " ".join(self.tokenizer.decode(kept).split())
        return text or first_words(normalize_text(source_text), 1)

    def iter_batches(self, texts: Sequence[str], batch_size: int | None = None) -> Iterator[list[str]]:
        """Summaries batch by batch (``batch_size`` texts each, the last batch possibly fewer).

        The decoding batch is ``min(batch_size, len(texts))`` rows, so one text is not decoded as 128.
        """
        texts = list(texts)
        rows = self.source_ids(texts)
        size = max(1, min(batch_size or self.decoding.batch_size, len(texts)))
        decoder = self.decoder(size)
        for start in range(0, len(texts), size):
            chunk = rows[start : start + size]
            ids, lengths = decoder(tf.constant(self._padded(chunk, size)))
            ids, lengths = ids.numpy(), lengths.numpy()
            yield [
                self.summary_of_ids(ids[row, : lengths[row]], texts[start + row]) for row in range(len(chunk))
            ]

    def summarize(self, texts: Sequence[str], batch_size: int | None = None) -> list[str]:
        """One non-empty summary per text, in order.

        Raises:
            ValueError: a text is empty or not a string.
        """
        return [summary for batch in self.iter_batches(texts, batch_size) for summary in batch]

    # Teacher forcing -------------------------------------------------------------------------------------

    def _teacher_forced_log_probs(self, source_ids: tf.Tensor, target_in: tf.Tensor) -> tf.Tensor:
        return self.model({"source_ids": source_ids, "target_in": target_in}, training=False)["log_probs"]

    def log_probs(self, source_ids: Any, target_in: Any) -> tf.Tensor:
        """Teacher-forced float32 log-probabilities (batch, target_time, vocab); one trace for every shape."""
        return self._log_probs_function(tf.cast(source_ids, tf.int32), tf.cast(target_in, tf.int32))

    def score(
        self, texts: Sequence[str], summaries: Sequence[str], batch_size: int | None = None
    ) -> tuple[float, int]:
        """Summed negative log-likelihood of ``summaries`` (EOS included, padding excluded) and token count.

        Perplexity is ``exp(sum / count)``. Texts and summaries are encoded as the tokenize stage does.
        """
        if len(texts) != len(summaries):
            raise ValueError(f"score: {len(texts)} texts but {len(summaries)} summaries")
        sources, targets = self.source_ids(texts), [self.target_ids(summary) for summary in summaries]
        size = batch_size or self.decoding.batch_size
        total_nll, total_tokens = 0.0, 0
        for start in range(0, len(targets), size):
            source_rows, target_rows = sources[start : start + size], targets[start : start + size]
            target_out = _right_padded(target_rows)
            target_in = _right_padded([[BOS_ID, *row[:-1]] for row in target_rows])
            nll, count = negative_log_likelihood(
                self.log_probs(_right_padded(source_rows), target_in), target_out
            )
            total_nll, total_tokens = total_nll + nll, total_tokens + count
        return total_nll, total_tokens


def _right_padded(rows: Sequence[Sequence[int]]) -> np.ndarray:
    array = np.full((len(rows), max(len(row) for row in rows)), PAD_ID, dtype=np.int32)
    for index, row in enumerate(rows):
        array[index, : len(row)] = row
    return array


__all__ = ["SummarizerPipeline", "decoding_config"]

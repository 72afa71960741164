"""The classic Keras summarizer recipe, rebuilt in Keras 3 as a benchmark baseline (not product code).

The recipe this project improves on, as found in countless tutorials:

- three stacked GRU encoder layers of 256 units, each followed by ``BatchNormalization``, with
  ``dropout=0.3`` and ``recurrent_dropout=0.3`` (which rules out the fused cuDNN kernel);
- a GRU decoder initialised from the last encoder layer's state;
- ``keras.layers.AdditiveAttention`` from the decoder outputs over all encoder outputs, concatenated with the
  decoder outputs, then a ``TimeDistributed`` softmax ``Dense`` over the vocabulary;
- AdamW with ``clipnorm``, ``sparse_categorical_crossentropy``, trained with ``model.fit``;
- inference through separate ``encoder_model`` / ``decoder_model`` Keras models that share the trained
  layers, and a Python loop that calls ``decoder_model.predict`` once per generated token, one text at a time.

Layers are shared by reference when the inference models are built, never looked up by index; otherwise the
recipe is kept as it is, including its costs (no padding mask, softmax over the vocabulary in the graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import keras
import numpy as np

from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID


@dataclass(frozen=True)
class ClassicConfig:
    """The recipe's sizes and optimizer settings."""

    vocab_size: int = 8000
    embedding_dim: int = 128
    units: int = 256
    encoder_layers: int = 3
    dropout: float = 0.3
    recurrent_dropout: float = 0.3
    learning_rate: float = 0.001
    weight_decay: float = 0.0001
    clipnorm: float = 1.0


class ClassicModels(NamedTuple):
    """The teacher-forced training model and the two inference models that share its layers."""

    training: keras.Model  # [source_ids, target_in] -> probabilities (batch, target_time, vocab)
    encoder: keras.Model  # source_ids -> [encoder outputs (batch, source_time, units), state (batch, units)]
    decoder: (
        keras.Model
    )  # [token (batch, 1), encoder outputs, state] -> [probabilities (batch, 1, vocab), state]


def _gru(config: ClassicConfig, name: str) -> keras.layers.GRU:
    return keras.layers.GRU(
        config.units,
        return_sequences=True,
        return_state=True,
        dropout=config.dropout,
        recurrent_dropout=config.recurrent_dropout,
        name=name,
    )


def build_classic(config: ClassicConfig) -> ClassicModels:
    """Build and compile the recipe's training model and its encoder/decoder inference models."""
    source_ids = keras.Input(shape=(None,), dtype="int32", name="source_ids")
    outputs = keras.layers.Embedding(config.vocab_size, config.embedding_dim, name="encoder_embedding")(
        source_ids
    )
    for index in range(config.encoder_layers):
        outputs, state = _gru(config, f"encoder_gru_{index}")(outputs)
        outputs = keras.layers.BatchNormalization(name=f"encoder_batch_normalization_{index}")(outputs)
    encoder_outputs, encoder_state = outputs, state

    decoder_embedding = keras.layers.Embedding(
        config.vocab_size, config.embedding_dim, name="decoder_embedding"
    )
    decoder_gru = _gru(config, "decoder_gru")
    attention = keras.layers.AdditiveAttention(name="attention")
    concatenate = keras.layers.Concatenate(axis=-1, name="concatenate")
    softmax = keras.layers.TimeDistributed(
        keras.layers.Dense(config.vocab_size, activation="softmax"), name="time_distributed_softmax"
    )

    def decode(target_ids, memory, initial_state):
        decoder_outputs, decoder_state = decoder_gru(
            decoder_embedding(target_ids), initial_state=initial_state
        )
        context = attention([decoder_outputs, memory])
        return softmax(concatenate([decoder_outputs, context])), decoder_state

    target_in = keras.Input(shape=(None,), dtype="int32", name="target_in")
    probabilities, _ = decode(target_in, encoder_outputs, encoder_state)
    training = keras.Model([source_ids, target_in], probabilities, name="classic_training")
    training.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=config.learning_rate, weight_decay=config.weight_decay, clipnorm=config.clipnorm
        ),
        loss="sparse_categorical_crossentropy",
    )

    encoder = keras.Model(source_ids, [encoder_outputs, encoder_state], name="classic_encoder")
    previous_token = keras.Input(shape=(1,), dtype="int32", name="previous_token")
    memory_input = keras.Input(shape=(None, config.units), name="encoder_outputs")
    state_input = keras.Input(shape=(config.units,), name="decoder_state")
    step_probabilities, step_state = decode(previous_token, memory_input, state_input)
    decoder = keras.Model(
        [previous_token, memory_input, state_input], [step_probabilities, step_state], name="classic_decoder"
    )
    return ClassicModels(training, encoder, decoder)


def summarize_one(
    models: ClassicModels, source_ids: np.ndarray, max_length: int, min_length: int
) -> list[int]:
    """The recipe's ``decode_sequence``: one ``decoder.predict`` call per generated token, greedy.

    Args:
        source_ids: one text's ids (source_time,).
        max_length: tokens generated at most, EOS included. min_length: EOS is banned before this many
            tokens exist (the same rule as :mod:`summarizer.decoding`, so both systems can be forced to
            generate exactly ``max_length`` tokens).

    Returns:
        The generated ids, without BOS and EOS.
    """
    memory, state = models.encoder.predict(source_ids[np.newaxis], verbose=0)
    previous = np.array([[BOS_ID]], dtype=np.int32)
    generated: list[int] = []
    while len(generated) < max_length:
        probabilities, state = models.decoder.predict([previous, memory, state], verbose=0)
        step = probabilities[0, -1].copy()
        step[PAD_ID] = -1.0
        if len(generated) < min_length:
            step[EOS_ID] = -1.0
        token = int(np.argmax(step))
        if token == EOS_ID:
            break
        generated.append(token)
        previous = np.array([[token]], dtype=np.int32)
    return generated


def summarize(
    models: ClassicModels, source_ids: np.ndarray, max_length: int, min_length: int
) -> list[list[int]]:
    """Summaries of each row of ``source_ids`` (texts, source_time), one text at a time (the recipe)."""
    return [summarize_one(models, row, max_length, min_length) for row in source_ids]


__all__ = ["ClassicConfig", "ClassicModels", "build_classic", "summarize", "summarize_one"]

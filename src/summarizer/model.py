"""Keras 3 GRU/LSTM encoder-decoder with additive or multiplicative attention, copy attention and coverage.

The decoder's recurrent layer runs over the whole target sequence and attention is applied to its outputs
afterwards, so teacher-forced training keeps the fused (cuDNN-capable) kernel; ``decode_step`` calls the same
layers on a length-1 sequence. Source and target share one vocabulary, so the pointer-generator copy
distribution is a scatter-add of the attention weights onto the source ids (no extended vocabulary).
"""

from __future__ import annotations

import keras
from keras import ops

from summarizer.config import TrainConfig

CELLS = ("gru", "lstm")
ATTENTIONS = ("additive", "multiplicative")
PROBABILITY_EPSILON = 1e-9  # keeps log() finite for tokens neither generated nor copied
_MASKED_SCORE = -1e9  # softmax weight exp(-1e9 - max) is exactly 0 in float32

_CUDNN_ARGUMENTS = {
    "activation": "tanh",
    "recurrent_activation": "sigmoid",
    "recurrent_dropout": 0.0,
    "unroll": False,
    "use_bias": True,
}


def _recurrent_layer(cell: str, units: int, name: str, dtype) -> keras.layers.RNN:
    """A GRU or LSTM returning sequences and states, with cuDNN-eligible settings."""
    arguments = dict(_CUDNN_ARGUMENTS, return_sequences=True, return_state=True, name=name, dtype=dtype)
    if cell == "gru":
        return keras.layers.GRU(units, reset_after=True, **arguments)
    return keras.layers.LSTM(units, **arguments)


def cudnn_eligible(layer: keras.layers.Layer) -> bool:
    """Whether a GRU/LSTM (or a Bidirectional of them) has the arguments the fused cuDNN kernel needs."""
    if isinstance(layer, keras.layers.Bidirectional):
        return cudnn_eligible(layer.forward_layer) and cudnn_eligible(layer.backward_layer)
    if not isinstance(layer, keras.layers.GRU | keras.layers.LSTM):
        return False
    config = layer.get_config()
    if any(config[name] != value for name, value in _CUDNN_ARGUMENTS.items()):
        return False
    return not isinstance(layer, keras.layers.GRU) or config["reset_after"]


def _state_count(cell: str) -> int:
    return 2 if cell == "lstm" else 1


class _ConfigFromAttributes:
    """``get_config`` for layers whose constructor arguments are stored under the same attribute names."""

    config_fields: tuple[str, ...] = ()

    def get_config(self):
        return {**super().get_config(), **{name: getattr(self, name) for name in self.config_fields}}


@keras.saving.register_keras_serializable(package="summarizer")
class RecurrentEncoder(_ConfigFromAttributes, keras.layers.Layer):
    """Stacked GRU/LSTM layers, optionally bidirectional with ``units // 2`` per direction."""

    config_fields = ("cell", "units", "num_layers", "bidirectional", "dropout")

    def __init__(self, cell: str, units: int, num_layers: int, bidirectional: bool, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.cell, self.units, self.num_layers = cell, units, num_layers
        self.bidirectional, self.dropout = bidirectional, dropout
        direction_units = units // 2 if bidirectional else units
        self.recurrent_layers = []
        for index in range(num_layers):
            layer = _recurrent_layer(cell, direction_units, f"{cell}_{index}", self.dtype_policy)
            if bidirectional:
                layer = keras.layers.Bidirectional(
                    layer, name=f"bidirectional_{index}", dtype=self.dtype_policy
                )
            self.recurrent_layers.append(layer)
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape):  # (batch, source_time, embedding_dim)
        shape = tuple(input_shape)
        for layer in self.recurrent_layers:
            layer.build(shape)
            shape = (*shape[:-1], self.units)
        self.built = True

    def call(self, embedded, source_mask, training=False):
        """Returns the memory (batch, source_time, units) and the last layer's final states (batch, units)."""
        outputs, states = embedded, []
        for index, layer in enumerate(self.recurrent_layers):
            if index > 0:
                outputs = self.dropout_layer(outputs, training=training)
            outputs, *states = layer(outputs, mask=source_mask, training=training)
        if self.bidirectional:  # [forward states..., backward states...] -> concatenated per state
            half = len(states) // 2
            states = [
                ops.concatenate(pair, axis=-1) for pair in zip(states[:half], states[half:], strict=True)
            ]
        return outputs, tuple(states)


def masked_softmax(scores, source_mask):
    """Softmax over source positions in float32; padding gets exactly zero weight."""
    scores = ops.cast(scores, "float32")
    mask = ops.expand_dims(source_mask, axis=-2)  # (batch, 1, source_time)
    weights = ops.softmax(ops.where(mask, scores, _MASKED_SCORE), axis=-1)
    return weights * ops.cast(mask, "float32")


@keras.saving.register_keras_serializable(package="summarizer")
class SourceAttention(_ConfigFromAttributes, keras.layers.Layer):
    """Bahdanau (additive) or Luong general (multiplicative) attention, with optional coverage.

    Keys (``W_k memory`` or ``W memory``) are projected once per source by :meth:`project_keys`.
    With coverage the weights are computed step by step over the target, since coverage at step t is
    the sum of the weights of the steps before it.
    """

    config_fields = ("kind", "units", "coverage")

    def __init__(self, kind: str, units: int, coverage: bool, **kwargs):
        super().__init__(**kwargs)
        self.kind, self.units, self.coverage = kind, units, coverage
        policy = self.dtype_policy
        self.key_projection = keras.layers.Dense(units, use_bias=False, name="key_projection", dtype=policy)
        if kind == "additive":
            self.query_projection = keras.layers.Dense(units, name="query_projection", dtype=policy)
            self.energy = keras.layers.Dense(1, use_bias=False, name="energy", dtype=policy)
        if coverage:
            coverage_units = units if kind == "additive" else 1
            self.coverage_projection = keras.layers.Dense(
                coverage_units, use_bias=False, name="coverage_projection", dtype=policy
            )

    def build(self, input_shape=None):
        self.key_projection.build((None, None, self.units))
        if self.kind == "additive":
            self.query_projection.build((None, None, self.units))
            self.energy.build((None, None, None, self.units))
        if self.coverage:
            self.coverage_projection.build((None, None, 1))
        self.built = True

    def project_keys(self, memory):
        return self.key_projection(memory)  # (batch, source_time, units)

    def _scores(self, queries, keys, coverage):
        """Unnormalised scores (batch, target_time, source_time)."""
        coverage_term = None
        if coverage is not None:
            # (batch, source_time, units) for additive, (batch, source_time, 1) for multiplicative
            coverage_term = self.coverage_projection(ops.expand_dims(coverage, -1))
        if self.kind == "multiplicative":
            scores = ops.matmul(queries, ops.transpose(keys, (0, 2, 1)))
            if coverage_term is not None:
                scores = scores + ops.expand_dims(coverage_term[..., 0], 1)
            return scores
        hidden = ops.expand_dims(self.query_projection(queries), 2) + ops.expand_dims(keys, 1)
        if coverage_term is not None:
            hidden = hidden + ops.expand_dims(coverage_term, 1)
        return ops.squeeze(self.energy(ops.tanh(hidden)), -1)  # (batch, target, source, units) -> scores

    def _weights_with_coverage(self, queries, keys, source_mask, coverage):
        """Scan over target steps; returns weights, coverage loss (batch, target_time), new coverage."""

        def step(carry, query):  # query (batch, units)
            step_coverage = carry[0]
            scores = self._scores(ops.expand_dims(query, 1), keys, step_coverage)
            weights = masked_softmax(scores, source_mask)[:, 0]  # (batch, source_time)
            loss = ops.sum(ops.minimum(weights, ops.cast(step_coverage, "float32")), axis=-1)
            new_carry = (step_coverage + ops.cast(weights, step_coverage.dtype), weights, loss)
            return new_carry, new_carry  # the TensorFlow scan needs outputs shaped like the carry

        initial = (
            coverage,
            ops.zeros_like(coverage, dtype="float32"),
            ops.zeros_like(coverage[:, 0], "float32"),
        )
        final, (_, weights, losses) = ops.scan(step, initial, ops.transpose(queries, (1, 0, 2)))
        return ops.transpose(weights, (1, 0, 2)), ops.transpose(losses), final[0]

    def call(self, queries, keys, memory, source_mask, coverage=None):
        """Attend from queries (batch, target_time, units) over the memory.

        Returns:
            weights (batch, target_time, source_time) float32, context (batch, target_time, memory_units),
            coverage loss (batch, target_time) float32, and the updated coverage (or None without coverage).
        """
        if coverage is None:
            weights = masked_softmax(self._scores(queries, keys, None), source_mask)
            coverage_loss = ops.zeros_like(weights[..., 0])
        else:
            weights, coverage_loss, coverage = self._weights_with_coverage(
                queries, keys, source_mask, coverage
            )
        context = ops.matmul(ops.cast(weights, memory.dtype), memory)
        return weights, context, coverage_loss, coverage


@keras.saving.register_keras_serializable(package="summarizer")
class AttentionalDecoder(_ConfigFromAttributes, keras.layers.Layer):
    """One GRU/LSTM layer, attention over its outputs, the attentional hidden state, logits and copy gate."""

    config_fields = ("cell", "units", "vocab_size", "attention", "copy_attention", "coverage", "dropout")

    def __init__(self, cell, units, vocab_size, attention, copy_attention, coverage, dropout, **kwargs):
        super().__init__(**kwargs)
        self.cell, self.units, self.vocab_size, self.attention = cell, units, vocab_size, attention
        self.copy_attention, self.coverage, self.dropout = copy_attention, coverage, dropout
        policy = self.dtype_policy
        self.recurrent = _recurrent_layer(cell, units, f"decoder_{cell}", policy)
        self.source_attention = SourceAttention(attention, units, coverage, name="attention", dtype=policy)
        self.combine = keras.layers.Dense(
            units, activation="tanh", use_bias=False, name="combine", dtype=policy
        )
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=policy)
        # In the policy's compute dtype: under mixed precision the model's largest matrix product (units x
        # vocabulary, two thirds of a training step's FLOPs) runs in float16/bfloat16; its logits are cast
        # to float32 before the softmax and the copy mixture.
        self.output_projection = keras.layers.Dense(vocab_size, name="output_projection", dtype=policy)
        if copy_attention:
            self.copy_gate = keras.layers.Dense(1, activation="sigmoid", name="copy_gate", dtype="float32")

    def build(self, input_shape):  # (batch, target_time, embedding_dim)
        embedding_dim = input_shape[-1]
        self.recurrent.build((None, None, embedding_dim))
        self.source_attention.build()
        self.combine.build((None, None, 2 * self.units))
        self.output_projection.build((None, None, self.units))
        if self.copy_attention:
            self.copy_gate.build((None, None, 2 * self.units + embedding_dim))
        self.built = True

    def call(self, embedded, state, context, training=False):
        """Decode embedded targets (batch, target_time, embedding_dim) from ``state``.

        Returns:
            A dict with float32 ``logits`` (batch, target_time, vocab), ``attention`` (batch, target_time,
            source_time), ``coverage_loss`` (batch, target_time) and, with copy attention, ``copy_gate``
            (batch, target_time, 1) = p_gen; and the new state tuple.
        """
        count = _state_count(self.cell)
        coverage = state[count] if self.coverage else None
        outputs, *recurrent_state = self.recurrent(
            embedded, initial_state=list(state[:count]), training=training
        )
        weights, attended, coverage_loss, coverage = self.source_attention(
            outputs, context["keys"], context["memory"], context["source_mask"], coverage
        )
        hidden = self.combine(ops.concatenate([outputs, attended], axis=-1))
        hidden = self.dropout_layer(hidden, training=training)
        result = {
            "logits": ops.cast(self.output_projection(hidden), "float32"),
            "attention": weights,
            "coverage_loss": coverage_loss,
        }
        if self.copy_attention:
            result["copy_gate"] = self.copy_gate(ops.concatenate([outputs, attended, embedded], axis=-1))
        new_state = (*recurrent_state, coverage) if self.coverage else tuple(recurrent_state)
        return result, new_state


def _scatter_onto_vocabulary(distribution, weights, source_ids):
    """Add weights (batch, time, source_time) into distribution (batch, time, vocab) at the source ids.

    A flat scatter-add: no (batch, source_time, vocab) one-hot is ever built; repeated ids accumulate.
    """
    batch, time, vocab = ops.shape(distribution)
    row_offsets = ops.reshape(ops.arange(batch * time, dtype="int32") * vocab, (batch, time, 1))
    flat_indices = row_offsets + ops.expand_dims(ops.cast(source_ids, "int32"), 1)  # (batch, time, source)
    flat = ops.scatter_update(
        ops.reshape(distribution, (-1,)),
        ops.reshape(flat_indices, (-1, 1)),
        ops.reshape(weights, (-1,)),
        reduction="add",
    )
    return ops.reshape(flat, (batch, time, vocab))


def output_log_probs(outputs, source_ids):
    """Full float32 log-probabilities (batch, time, vocab) from the decoder's outputs."""
    if "copy_gate" not in outputs:
        return ops.log_softmax(outputs["logits"], axis=-1)
    gate = outputs["copy_gate"]  # p_gen (batch, time, 1)
    generated = gate * ops.softmax(outputs["logits"], axis=-1)
    final = _scatter_onto_vocabulary(generated, (1.0 - gate) * outputs["attention"], source_ids)
    return ops.log(final + PROBABILITY_EPSILON)


def target_log_probs(outputs, source_ids, target_ids):
    """Float32 log-probabilities (batch, time) of ``target_ids`` only; equal to gathering output_log_probs.

    Cheaper for training: neither the mixed distribution nor its log is materialised over the vocabulary.
    """
    logits = outputs["logits"]
    target_logits = ops.take_along_axis(logits, ops.expand_dims(target_ids, -1), axis=-1)[..., 0]
    log_generated = target_logits - ops.logsumexp(logits, axis=-1)
    if "copy_gate" not in outputs:
        return log_generated
    gate = outputs["copy_gate"][..., 0]
    # (batch, time, source_time): where each source token is the target token
    is_target = ops.equal(ops.expand_dims(source_ids, 1), ops.expand_dims(target_ids, -1))
    copied = ops.sum(ops.where(is_target, outputs["attention"], 0.0), axis=-1)
    return ops.log(gate * ops.exp(log_generated) + (1.0 - gate) * copied + PROBABILITY_EPSILON)


def _check_arguments(
    vocab_size, cell, embedding_dim, units, encoder_layers, bidirectional, attention, dropout, pad_id
):
    """Raise ValueError naming the train.* parameter that is out of range."""
    problems = []
    if cell not in CELLS:
        problems.append(f"train.cell: expected one of {', '.join(CELLS)}, got {cell!r}")
    if attention not in ATTENTIONS:
        problems.append(f"train.attention: expected one of {', '.join(ATTENTIONS)}, got {attention!r}")
    sizes = {"embedding_dim": embedding_dim, "units": units, "encoder_layers": encoder_layers}
    for name, value in sizes.items():
        if value < 1:
            problems.append(f"train.{name}: expected an integer >= 1, got {value}")
    if bidirectional and units % 2:
        problems.append(
            f"train.units: must be even with train.bidirectional (units // 2 per direction), got {units}"
        )
    if not 0.0 <= dropout < 1.0:
        problems.append(f"train.dropout: expected 0 <= dropout < 1, got {dropout}")
    if not 0 <= pad_id < vocab_size:
        problems.append(f"vocab_size {vocab_size} must exceed pad_id {pad_id}")
    if problems:
        raise ValueError("Summarizer: " + "; ".join(problems))


@keras.saving.register_keras_serializable(package="summarizer")
class Summarizer(_ConfigFromAttributes, keras.Model):
    """Encoder-decoder summarizer over one shared vocabulary (source and target embeddings are shared).

    ``call`` takes ``{"source_ids", "target_in"}`` int32 (batch, time) right-padded with ``pad_id`` and
    returns float32 ``log_probs`` (batch, target_time, vocab), ``coverage_loss`` (batch, target_time; zeros
    without coverage) and ``attention`` (batch, target_time, source_time). For decoding, ``encode`` and
    ``decode_step`` expose the same layers one step at a time, with batch-first tensors a beam can tile.
    """

    config_fields = (
        *("vocab_size", "cell", "embedding_dim", "units", "encoder_layers", "bidirectional", "attention"),
        *("copy_attention", "coverage", "dropout", "pad_id"),
    )

    def __init__(
        self,
        vocab_size: int,
        cell: str = "gru",
        embedding_dim: int = 128,
        units: int = 256,
        encoder_layers: int = 1,
        bidirectional: bool = True,
        attention: str = "additive",
        copy_attention: bool = True,
        coverage: bool = False,
        dropout: float = 0.1,
        pad_id: int = 0,
        **kwargs,
    ):
        _check_arguments(
            vocab_size, cell, embedding_dim, units, encoder_layers, bidirectional, attention, dropout, pad_id
        )
        super().__init__(**kwargs)
        self.vocab_size, self.cell, self.embedding_dim, self.units = vocab_size, cell, embedding_dim, units
        self.encoder_layers, self.bidirectional, self.attention = encoder_layers, bidirectional, attention
        self.copy_attention, self.coverage, self.dropout, self.pad_id = (
            copy_attention,
            coverage,
            dropout,
            pad_id,
        )
        policy = self.dtype_policy
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding", dtype=policy)
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=policy)
        self.encoder = RecurrentEncoder(
            cell, units, encoder_layers, bidirectional, dropout, name="encoder", dtype=policy
        )
        decoder_arguments = (cell, units, vocab_size, attention, copy_attention, coverage, dropout)
        self.decoder = AttentionalDecoder(*decoder_arguments, name="decoder", dtype=policy)

    def build(self, input_shape=None):
        """Create every variable; the shapes depend only on the constructor arguments."""
        self.embedding.build((None, None))
        self.encoder.build((None, None, self.embedding_dim))
        self.decoder.build((None, None, self.embedding_dim))
        self.built = True

    def recurrent_layers(self) -> list[keras.layers.Layer]:
        """Every GRU/LSTM layer (Bidirectional wrappers included as such)."""
        return [*self.encoder.recurrent_layers, self.decoder.recurrent]

    def _embed(self, ids, training):
        return self.embedding_dropout(self.embedding(ids), training=training)

    def encode(self, source_ids, training=False):
        """Encode source ids (batch, source_time) into a context dict and the decoder's initial state."""
        source_ids = ops.cast(source_ids, "int32")
        source_mask = ops.not_equal(source_ids, self.pad_id)
        memory, final_states = self.encoder(self._embed(source_ids, training), source_mask, training=training)
        context = {
            "memory": memory,  # (batch, source_time, units)
            "keys": self.decoder.source_attention.project_keys(memory),  # (batch, source_time, units)
            "source_ids": source_ids,
            "source_mask": source_mask,
        }
        if self.coverage:
            final_states = (*final_states, ops.zeros_like(memory[..., 0]))  # coverage (batch, source_time)
        return context, final_states

    def _decode(self, target_in, state, context, training):
        embedded = self._embed(ops.cast(target_in, "int32"), training)
        return self.decoder(embedded, state, context, training=training)

    def call(self, inputs, training=False):
        context, state = self.encode(inputs["source_ids"], training=training)
        outputs, _ = self._decode(inputs["target_in"], state, context, training)
        return {
            "log_probs": output_log_probs(outputs, context["source_ids"]),
            "coverage_loss": outputs["coverage_loss"],
            "attention": outputs["attention"],
        }

    def score(self, inputs, training=False):
        """Teacher-forced log-probabilities of ``inputs["target_out"]`` (batch, target_time), for training.

        Returns a dict with float32 ``target_log_probs`` and ``coverage_loss`` (batch, target_time); the
        values equal gathering ``call(inputs)["log_probs"]`` at the targets but cost less.
        """
        context, state = self.encode(inputs["source_ids"], training=training)
        outputs, _ = self._decode(inputs["target_in"], state, context, training)
        target_ids = ops.cast(inputs["target_out"], "int32")
        return {
            "target_log_probs": target_log_probs(outputs, context["source_ids"], target_ids),
            "coverage_loss": outputs["coverage_loss"],
        }

    def decode_step(self, previous_ids, state, context):
        """One decoding step: previous ids (batch,) -> float32 log-probabilities (batch, vocab), new state."""
        outputs, new_state = self._decode(ops.expand_dims(previous_ids, 1), state, context, training=False)
        return output_log_probs(outputs, context["source_ids"])[:, 0], new_state


def build_model(config: TrainConfig, vocab_size: int) -> Summarizer:
    """A built :class:`Summarizer` for the train section; coverage is on when ``coverage_weight > 0``.

    The caller sets the mixed-precision policy (``config.precision``) before calling this.
    """
    model = Summarizer(
        vocab_size=vocab_size,
        cell=config.cell,
        embedding_dim=config.embedding_dim,
        units=config.units,
        encoder_layers=config.encoder_layers,
        bidirectional=config.bidirectional,
        attention=config.attention,
        copy_attention=config.copy_attention,
        coverage=config.coverage_weight > 0,
        dropout=config.dropout,
    )
    model.build()
    return model


__all__ = [
    "ATTENTIONS",
    "CELLS",
    "AttentionalDecoder",
    "RecurrentEncoder",
    "SourceAttention",
    "Summarizer",
    "build_model",
    "cudnn_eligible",
    "masked_softmax",
    "output_log_probs",
    "target_log_probs",
]

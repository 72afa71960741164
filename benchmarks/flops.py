"""FLOPs of one training example, counted from the layer shapes of ``summarizer.model.build_model``.

Conventions (the README's Benchmarks section states them too):

* A multiply-add is 2 FLOPs: a matrix product (m x k) @ (k x n) is ``2 m k n``. Every matrix product of the
  forward pass is counted exactly (the ``matmul`` part of each term); this part is what the check against
  TensorFlow's profiler must reproduce.
* Element-wise work (biases, gate arithmetic, tanh/sigmoid/exp, softmax, dropout, the loss) is counted as one
  FLOP per element per arithmetic or transcendental op (the ``elementwise`` part); it is an estimate, 1-2% of
  the total at our shapes. Gathers (embedding lookups, picking the target's logit), selects (RNN masking),
  casts and reshapes count 0.
* Forward + backward = ``BACKWARD_MULTIPLIER`` (3) x forward: the backward pass of ``y = x W`` computes
  ``dx = dy W^T`` and ``dW = x^T dy``, each as many FLOPs as the forward product (Kaplan et al. 2020's 2N
  forward + 4N backward per parameter and token). Element-wise work gets the same multiplier.
* The optimizer (AdamW with per-tensor clipnorm) costs ``OPTIMIZER_FLOPS_PER_PARAMETER`` per parameter per
  step, shared by the batch's examples.

The recurrent layers run every timestep of the padded batch (masking holds the state, it does not skip the
step), so a batch costs its padded lengths: :func:`train_flops_per_example` at the batch's padded lengths is
the work done, at each example's own lengths the useful work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from summarizer.config import TrainConfig

GATES = {"gru": 3, "lstm": 4}
BACKWARD_MULTIPLIER = 3
# Per unit and timestep, besides the two products. GRU (reset_after): 2 bias adds of 3 units (6), z and r:
# add + sigmoid (4), candidate: r * (U h) + add + tanh (3), h = z h + (1 - z) h~: sub, 2 mul, add (4).
# LSTM: W x + U h and + bias on 4 units (8), 3 sigmoids + tanh (4), c = f c + i c~ (3), h = o tanh(c) (2).
CELL_ELEMENTWISE_PER_UNIT = {"gru": 17, "lstm": 17}
DROPOUT_FLOPS_PER_ELEMENT = 2  # compare the random draw, scale
SOFTMAX_FLOPS_PER_SCORE = 6  # max, subtract, exp, sum, divide, times the mask
LOGSUMEXP_FLOPS_PER_LOGIT = 4  # max, subtract, exp, sum
LOSS_FLOPS_PER_TARGET = 4  # target logit - logsumexp, mask compare, mask multiply, sum
COPY_FLOPS_PER_TARGET = 7  # exp, p_gen *, 1 - p_gen, *, +, + epsilon, log
OPTIMIZER_FLOPS_PER_PARAMETER = 17  # clipnorm: square, sum, scale (3); AdamW: decay 2, m 3, v 4, update 5
MATMUL_OP_TYPES = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")

Terms = dict[str, tuple[Any, Any]]  # term -> (matmul FLOPs, element-wise FLOPs); numbers or arrays


def _direction_units(config: TrainConfig) -> tuple[int, int]:
    directions = 2 if config.bidirectional else 1
    return directions, config.units // directions


def _cell_parameters(cell: str, input_width: int, units: int) -> int:
    """Kernel, recurrent kernel and biases of one Keras GRU (reset_after: two biases) or LSTM cell."""
    gates = GATES[cell]
    biases = 2 * gates * units if cell == "gru" else gates * units
    return gates * units * (input_width + units) + biases


def parameter_count(config: TrainConfig, vocab_size: int) -> int:
    """Trainable parameters of ``build_model(config, vocab_size)``, from the layer shapes."""
    embedding, units = config.embedding_dim, config.units
    directions, direction_units = _direction_units(config)
    total = vocab_size * embedding
    for layer in range(config.encoder_layers):
        width = embedding if layer == 0 else units
        total += directions * _cell_parameters(config.cell, width, direction_units)
    total += units * units  # attention key projection
    if config.attention == "additive":
        total += units * units + units + units  # query projection (+ bias), energy
    if config.coverage_weight > 0:
        total += units if config.attention == "additive" else 1
    total += _cell_parameters(config.cell, embedding, units)  # decoder
    total += 2 * units * units  # combine (no bias)
    total += units * vocab_size + vocab_size  # output projection
    if config.copy_attention:
        total += 2 * units + embedding + 1
    return total


def forward_terms(
    config: TrainConfig, vocab_size: int, source_length: Any, target_length: Any, training: bool = True
) -> Terms:
    """Forward FLOPs of one example by part of the model, at these source and target lengths.

    The lengths may be NumPy arrays (one entry per example): every term is then an array. ``training``
    counts dropout. The loss is the train step's (``Summarizer.score``: no label smoothing).
    """
    source, target = source_length, target_length
    embedding, units, vocab = config.embedding_dim, config.units, vocab_size
    gates, cell_work = GATES[config.cell], CELL_ELEMENTWISE_PER_UNIT[config.cell]
    directions, direction_units = _direction_units(config)
    dropout = DROPOUT_FLOPS_PER_ELEMENT if training and config.dropout > 0 else 0
    pairs = target * source  # (target step, source position) pairs of attention
    terms: Terms = {"embedding": (0, dropout * (source + target) * embedding)}  # the lookup is a gather
    for layer in range(config.encoder_layers):
        width = embedding if layer == 0 else units
        matmul = directions * source * 2 * gates * direction_units * (width + direction_units)
        elementwise = directions * source * cell_work * direction_units
        if layer > 0:
            elementwise = elementwise + dropout * source * units
        terms[f"encoder_{layer}"] = (matmul, elementwise)
    terms["attention_keys"] = (source * 2 * units * units, 0 * source)
    terms["decoder_recurrent"] = (
        target * 2 * gates * units * (embedding + units),
        target * cell_work * units,
    )
    if config.attention == "additive":
        # query projection (+ bias) per target step; per pair: query + key, tanh, energy (a product with H)
        score_matmul = target * 2 * units * units + pairs * 2 * units
        score_elementwise = target * units + pairs * 2 * units
    else:
        score_matmul, score_elementwise = pairs * 2 * units, 0 * pairs  # query . key
    terms["attention"] = (
        score_matmul + pairs * 2 * units,  # + the context: weights @ memory
        score_elementwise + pairs * SOFTMAX_FLOPS_PER_SCORE,
    )
    if config.coverage_weight > 0:
        width = units if config.attention == "additive" else 1
        # coverage projection (a product with inner size 1) and its add per pair; min, sum, update per source
        terms["coverage"] = (pairs * 2 * width, pairs * (width + 3))
    terms["combine"] = (
        target * 2 * (2 * units) * units,
        target * units + dropout * target * units,  # tanh, dropout
    )
    terms["output_projection"] = (target * 2 * units * vocab, target * vocab)  # + bias
    loss = target * (LOGSUMEXP_FLOPS_PER_LOGIT * vocab + LOSS_FLOPS_PER_TARGET)
    if config.copy_attention:
        terms["copy_gate"] = (target * 2 * (2 * units + embedding), target * 2)  # + bias, sigmoid
        loss = loss + target * (COPY_FLOPS_PER_TARGET + 2 * source)  # source == target: compare, sum
    terms["loss"] = (0 * target, loss)
    return terms


def totals(terms: Terms) -> dict[str, Any]:
    """Sums of the matmul and element-wise parts and their total."""
    matmul = sum(part[0] for part in terms.values())
    elementwise = sum(part[1] for part in terms.values())
    return {"matmul": matmul, "elementwise": elementwise, "total": matmul + elementwise}


def train_flops_per_example(
    config: TrainConfig, vocab_size: int, source_length: Any, target_length: Any, batch_size: int
) -> dict[str, Any]:
    """One example's share of a train step: forward x BACKWARD_MULTIPLIER + the optimizer's share.

    Returns ``forward`` (matmul, elementwise, total), ``matmul`` (forward + backward products),
    ``optimizer`` and ``total``.
    """
    forward = totals(forward_terms(config, vocab_size, source_length, target_length, training=True))
    optimizer = OPTIMIZER_FLOPS_PER_PARAMETER * parameter_count(config, vocab_size) / batch_size
    return {
        "forward": forward,
        "matmul": BACKWARD_MULTIPLIER * forward["matmul"],
        "optimizer": optimizer,
        "total": BACKWARD_MULTIPLIER * forward["total"] + optimizer,
    }


def breakdown(config: TrainConfig, vocab_size: int, source_length: int, target_length: int) -> dict[str, Any]:
    """Forward MFLOPs per example by part (matmul + element-wise), rounded, for the results file."""
    terms = forward_terms(config, vocab_size, source_length, target_length)
    return {name: round((matmul + elementwise) / 1e6, 3) for name, (matmul, elementwise) in terms.items()}


def mean_over_examples(values: Any) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


__all__ = [
    "BACKWARD_MULTIPLIER",
    "MATMUL_OP_TYPES",
    "OPTIMIZER_FLOPS_PER_PARAMETER",
    "breakdown",
    "forward_terms",
    "parameter_count",
    "totals",
    "train_flops_per_example",
]

"""Batched greedy and beam search over a step function, graph-compatible and model-agnostic.

The model is seen only through ``step_fn(previous_ids, state) -> (log_probs, new_state)``:
``previous_ids`` int32 ``(N,)``, ``state`` a structure (tuple) of batch-first tensors, ``log_probs`` float32
``(N, vocab)`` normalized log-probabilities (the scores are their sums, so logits would give unnormalized
scores). Anything else the step needs (encoder memory, source ids, masks) is closed over by ``step_fn``; for
beam search the caller tiles it, and the initial state, with :func:`tile_beams`.

Both searches are one ``tf.while_loop`` with fixed shapes: a preallocated ``(N, max_length)`` id buffer is
written one column per step, never one ``predict`` call per token. They run eagerly (op by op, fine for a
few batches and for tests) and inside a ``tf.function``: callers that decode many batches wrap encode and
search in one ``tf.function`` so the loop is traced once (OpenNMT-tf's ``utils/decoding.py`` design).

Conventions shared by both searches:

- ``ids`` ``(B, max_length)`` hold the generated tokens without BOS and without EOS, right-padded with
  ``pad_id``; ``lengths`` count them. ``max_length`` bounds the generated tokens including EOS, like
  ``tokenize.max_target_tokens`` bounds targets that end with EOS.
- ``scores`` are the summed log-probabilities of the returned tokens, EOS included when it was generated.
- ``pad_id`` and ``bos_id`` are never generated (their log-probs are -inf), so padding is unambiguous.
- ``min_length``: EOS is banned until ``min_length`` tokens exist, so a summary is never empty.
- ``no_repeat_ngram_size`` n > 0: a token that would complete an n-gram already present among the
  generated tokens is banned (vectorised: every (n-1)-window of the history is compared with the last n-1
  tokens, and the tokens that followed matching windows are scattered to -inf).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import tensorflow as tf

StepFunction = Callable[[tf.Tensor, Any], tuple[tf.Tensor, Any]]


class DecodeResult(NamedTuple):
    ids: tf.Tensor  # (batch, max_length) int32, no BOS/EOS, padded with pad_id
    lengths: tf.Tensor  # (batch,) int32
    scores: tf.Tensor  # (batch,) float32, summed log-probabilities


def tile_beams(structure: Any, beam_width: int) -> Any:
    """Repeat every batch item ``beam_width`` times consecutively: (B, ...) -> (B * beam_width, ...).

    Accepts a tensor or a nested structure of tensors (an RNN state tuple). Item 0's beams come first,
    which is the layout :func:`beam_search` expects for the initial state and for the step's context.
    """
    _check_positive(beam_width, "beam_width")
    return tf.nest.map_structure(lambda tensor: tf.repeat(tensor, beam_width, axis=0), structure)


def _check_positive(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"decoding: {name} must be a Python integer >= 1, got {value!r}")


def _settings(
    max_length: int, min_length: int, no_repeat_ngram_size: int, bos_id: int, eos_id: int, pad_id: int
) -> dict[str, int]:
    """Validate the settings shared by both searches and return them as one dict for the step constraints."""
    ids = {"bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id}
    _check_positive(max_length, "max_length")
    if not isinstance(min_length, int) or not 0 <= min_length <= max_length:
        raise ValueError(
            f"decoding: min_length must be an integer in 0..max_length={max_length}, got {min_length!r}"
        )
    if not isinstance(no_repeat_ngram_size, int) or no_repeat_ngram_size < 0:
        raise ValueError(
            f"decoding: no_repeat_ngram_size must be an integer >= 0 (0 = off), got {no_repeat_ngram_size!r}"
        )
    for name, value in ids.items():
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"decoding: {name} must be a token id >= 0, got {value!r}")
    if len(set(ids.values())) != len(ids):
        raise ValueError(f"decoding: bos_id, eos_id and pad_id must differ, got {ids}")
    return {"min_length": min_length, "no_repeat_ngram_size": no_repeat_ngram_size, **ids}


def _relaxed_shapes(structure: Any) -> Any:
    """Shape invariants with an unknown batch dimension, so a dynamic batch size traces once."""

    def relax(tensor: tf.Tensor) -> tf.TensorShape:
        shape = tensor.shape
        return shape if shape.rank == 0 else tf.TensorShape([None]).concatenate(shape[1:])

    return tf.nest.map_structure(relax, structure)


def _ban_special_tokens(log_probs: tf.Tensor, step: tf.Tensor, settings: dict[str, int]) -> tf.Tensor:
    """-inf for PAD and BOS always, and for EOS while fewer than ``min_length`` tokens exist.

    A scatter-min into three columns: ``+inf`` leaves a log-prob unchanged, ``-inf`` bans it. Touching only
    those columns keeps this O(N) instead of another (N, vocab) pass.
    """
    rows = tf.range(tf.shape(log_probs)[0])
    eos_update = tf.where(step < settings["min_length"], -float("inf"), float("inf"))
    columns = {
        settings["pad_id"]: -float("inf"),
        settings["bos_id"]: -float("inf"),
        settings["eos_id"]: eos_update,
    }
    indices = tf.concat(
        [tf.stack([rows, tf.fill(tf.shape(rows), column)], axis=1) for column in columns], axis=0
    )
    updates = tf.concat([tf.fill(tf.shape(rows), update) for update in columns.values()], axis=0)
    return tf.tensor_scatter_nd_min(log_probs, indices, updates)


def _ban_repeated_ngrams(
    log_probs: tf.Tensor, history: tf.Tensor, step: tf.Tensor, ngram_size: int
) -> tf.Tensor:
    """-inf for every token that would complete an n-gram already in ``history[:, :step]``.

    Window j covers history[j : j + n - 1] and is followed by history[j + n - 1]; it counts when that follower
    was already generated (j + n - 1 < step) and the window equals the last n - 1 tokens.
    """
    max_length = history.shape[1]
    num_windows = max_length - ngram_size + 1
    if num_windows <= 0:  # no n-gram fits in max_length tokens
        return log_probs
    context = ngram_size - 1
    suffix_start = tf.maximum(step - context, 0)
    suffix = tf.slice(history, [0, suffix_start], [-1, context])  # (N, n - 1)
    matches = tf.range(num_windows)[tf.newaxis, :] < step - context  # (1, windows)
    for offset in range(context):
        matches = tf.logical_and(
            matches, history[:, offset : offset + num_windows] == suffix[:, offset : offset + 1]
        )
    followers = history[:, context : context + num_windows]  # (N, windows)
    matches = tf.broadcast_to(matches, tf.shape(followers))  # n = 1 compares nothing: still one flag a window
    rows = tf.broadcast_to(tf.range(tf.shape(history)[0])[:, tf.newaxis], tf.shape(followers))
    indices = tf.reshape(tf.stack([rows, followers], axis=-1), [-1, 2])
    updates = tf.reshape(tf.where(matches, -float("inf"), float("inf")), [-1])
    return tf.tensor_scatter_nd_min(log_probs, indices, updates)


def _constrain(
    log_probs: tf.Tensor, history: tf.Tensor, step: tf.Tensor, settings: dict[str, int]
) -> tf.Tensor:
    log_probs = _ban_special_tokens(log_probs, step, settings)
    if settings["no_repeat_ngram_size"] > 0:
        log_probs = _ban_repeated_ngrams(log_probs, history, step, settings["no_repeat_ngram_size"])
    return log_probs


def _call_step(step_fn: StepFunction, previous_ids: tf.Tensor, state: Any) -> tuple[tf.Tensor, Any]:
    """Run one step; the new state is repacked like the old one (a list returned for a tuple is fine)."""
    log_probs, new_state = step_fn(previous_ids, state)
    return tf.cast(log_probs, tf.float32), tf.nest.pack_sequence_as(state, tf.nest.flatten(new_state))


def _write_column(buffer: tf.Tensor, step: tf.Tensor, tokens: tf.Tensor) -> tf.Tensor:
    """buffer[:, step] = tokens, with fixed shapes (buffer is (N, max_length), tokens (N,))."""
    column = tf.one_hot(step, buffer.shape[1], on_value=True, off_value=False, dtype=tf.bool)
    return tf.where(column[tf.newaxis, :], tokens[:, tf.newaxis], buffer)


def greedy_search(
    step_fn: StepFunction,
    initial_state: Any,
    batch_size: int | tf.Tensor,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
    min_length: int = 1,
    no_repeat_ngram_size: int = 0,
    pad_id: int = 0,
) -> DecodeResult:
    """Pick the most probable token at each step until every item has produced EOS or ``max_length``.

    Args:
        step_fn: ``(previous_ids (N,), state) -> (log_probs (N, V), new_state)``.
        initial_state: the decoder state for ``batch_size`` items (a structure of batch-first tensors).
        batch_size: a Python int or a scalar int tensor (``tf.shape(source)[0]`` inside a ``tf.function``).

    Raises:
        ValueError: a length or token id setting is out of range.
    """
    settings = _settings(max_length, min_length, no_repeat_ngram_size, bos_id, eos_id, pad_id)
    batch_size = tf.convert_to_tensor(batch_size, dtype=tf.int32)

    def body(step, previous_ids, state, ids, lengths, scores, finished):
        log_probs, state = _call_step(step_fn, previous_ids, state)
        log_probs = _constrain(log_probs, ids, step, settings)
        tokens = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        token_log_probs = tf.gather(log_probs, tokens, batch_dims=1)
        scores += tf.where(finished, 0.0, token_log_probs)
        ended = tf.logical_and(tf.logical_not(finished), tokens == eos_id)
        finished = tf.logical_or(finished, ended)
        tokens = tf.where(finished, pad_id, tokens)
        lengths += tf.cast(tf.logical_not(finished), tf.int32)
        return step + 1, tokens, state, _write_column(ids, step, tokens), lengths, scores, finished

    def condition(step, previous_ids, state, ids, lengths, scores, finished):
        return tf.logical_not(tf.reduce_all(finished))

    loop_vars = (
        tf.constant(0),
        tf.fill([batch_size], bos_id),
        initial_state,
        tf.fill([batch_size, max_length], pad_id),
        tf.zeros([batch_size], tf.int32),
        tf.zeros([batch_size], tf.float32),
        tf.zeros([batch_size], tf.bool),
    )
    _, _, _, ids, lengths, scores, _ = tf.while_loop(
        condition, body, loop_vars, shape_invariants=_relaxed_shapes(loop_vars), maximum_iterations=max_length
    )
    return DecodeResult(ids=ids, lengths=lengths, scores=scores)


def _chunk_size(size: int, k: int) -> int:
    """A chunk length for :func:`_top_k`: a divisor of ``size`` near sqrt(size / k), which balances its two
    top-k passes (over size / chunk chunk maxima, then over k * chunk values); 0 when none is near."""
    target = max(1, round((size / k) ** 0.5))
    divisors = [chunk for chunk in range(max(1, target // 2), 2 * target + 1) if size % chunk == 0]
    return min(divisors, key=lambda chunk: abs(chunk - target)) if divisors else 0


def _top_k(values: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``tf.math.top_k(values, k)`` of a (B, M) tensor, with the same ties (lower index first), much faster.

    TensorFlow's CPU top-k over beam_width * vocab values per row costs ~10x a full pass, more than an RNN
    step. The k largest values lie in the k chunks with the largest maxima, so: take chunk maxima, keep the
    top-k chunks in index order, and run top-k over their k * chunk values only.
    """
    size = values.shape[-1]
    chunk = _chunk_size(size, k) if size is not None else 0
    if chunk == 0 or size // chunk < k:
        return tf.math.top_k(values, k)
    rows = tf.shape(values)[0]
    chunks = tf.reshape(values, [rows, size // chunk, chunk])
    _, best_chunks = tf.math.top_k(tf.reduce_max(chunks, axis=-1), k)
    best_chunks = tf.sort(best_chunks, axis=-1)  # index order, so ties resolve as in tf.math.top_k
    candidates = tf.reshape(tf.gather(chunks, best_chunks, batch_dims=1), [rows, k * chunk])
    top_values, positions = tf.math.top_k(candidates, k)
    indices = tf.gather(best_chunks, positions // chunk, batch_dims=1) * chunk + positions % chunk
    return top_values, indices


def _length_penalty(length: tf.Tensor, alpha: float) -> tf.Tensor:
    """GNMT's ((5 + length) / 6) ** alpha; length counts generated tokens, EOS included."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


class _Best(NamedTuple):
    """The best finished hypothesis of each batch item so far."""

    ids: tf.Tensor  # (B, max_length)
    lengths: tf.Tensor  # (B,)
    log_probs: tf.Tensor  # (B,) raw summed log-probabilities
    scores: tf.Tensor  # (B,) length-penalized, used for ranking


def _update_best(best: _Best, candidate: _Best) -> _Best:
    """Keep the candidate where its penalized score is strictly higher (ties keep the earlier one)."""
    better = candidate.scores > best.scores
    return _Best(
        ids=tf.where(better[:, tf.newaxis], candidate.ids, best.ids),
        lengths=tf.where(better, candidate.lengths, best.lengths),
        log_probs=tf.where(better, candidate.log_probs, best.log_probs),
        scores=tf.where(better, candidate.scores, best.scores),
    )


def _finished_candidates(top_scores, top_tokens, top_parents, alive_ids, step, *, beam_width, eos_id, alpha):
    """The best EOS candidate per item among the top ``beam_width`` (a lower EOS would not hold a beam).

    Keeping only top-``beam_width`` EOS candidates makes beam width 1 identical to greedy search.
    """
    in_beam = tf.range(2 * beam_width)[tf.newaxis, :] < beam_width
    is_finished = tf.logical_and(top_tokens == eos_id, in_beam)
    penalized = tf.where(is_finished, top_scores / _length_penalty(step + 1, alpha), -float("inf"))
    position = tf.argmax(penalized, axis=-1, output_type=tf.int32)  # (B,)
    return _Best(
        ids=tf.gather(alive_ids, tf.gather(top_parents, position, batch_dims=1)),
        lengths=tf.fill(tf.shape(position), step),
        log_probs=tf.gather(top_scores, position, batch_dims=1),
        scores=tf.gather(penalized, position, batch_dims=1),
    )


def beam_search(
    step_fn: StepFunction,
    initial_state: Any,
    batch_size: int | tf.Tensor,
    *,
    beam_width: int,
    bos_id: int,
    eos_id: int,
    max_length: int,
    min_length: int = 1,
    length_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
    pad_id: int = 0,
) -> DecodeResult:
    """Keep the ``beam_width`` most probable unfinished hypotheses per item; return the best finished one.

    Each step takes the top ``2 * beam_width`` of the (B, beam_width * V) candidates (Tensor2Tensor and
    Hugging Face do the same): EOS candidates ranked within the top ``beam_width`` finish, scored
    ``log_prob / ((5 + length) / 6) ** length_penalty``; the best ``beam_width`` non-EOS candidates stay
    alive, ranked by raw log-probability. At ``max_length`` the alive hypotheses finish as they are. The
    loop stops early once no alive hypothesis can beat an item's best finished score. Only beam 0 of each
    item starts alive, so the first step does not pick ``beam_width`` copies of one token.

    Args:
        step_fn: ``(previous_ids (B*k,), state) -> (log_probs (B*k, V), new_state)``; its state is reordered
            each step by a gather on the flattened parent beam index (static context needs no reordering: a
            parent always belongs to the same item).
        initial_state: already tiled with :func:`tile_beams` to ``batch_size * beam_width`` rows.
        batch_size: the number of items B (a Python int or a scalar int tensor).

    Returns:
        the best finished hypothesis per item; ``scores`` are its raw summed log-probabilities (without the
        length penalty, comparable with :func:`greedy_search`).

    Raises:
        ValueError: a width, length or token id setting is out of range.
    """
    _check_positive(beam_width, "beam_width")
    settings = _settings(max_length, min_length, no_repeat_ngram_size, bos_id, eos_id, pad_id)
    if length_penalty < 0:
        raise ValueError(f"decoding: length_penalty must be >= 0, got {length_penalty!r}")
    alpha = float(length_penalty)
    batch_size = tf.convert_to_tensor(batch_size, dtype=tf.int32)
    beam_offsets = tf.range(batch_size)[:, tf.newaxis] * beam_width  # (B, 1)

    def body(step, previous_ids, state, alive_ids, alive_log_probs, best):
        log_probs, state = _call_step(step_fn, previous_ids, state)
        log_probs = _constrain(log_probs, alive_ids, step, settings)  # (B*k, V)
        vocab_size = tf.shape(log_probs)[-1]
        candidates = alive_log_probs[:, :, tf.newaxis] + tf.reshape(
            log_probs, [batch_size, beam_width, vocab_size]
        )
        static_vocab_size = log_probs.shape[-1]  # a static width lets _top_k pick its chunks at trace time
        flat_width = -1 if static_vocab_size is None else beam_width * static_vocab_size
        flat_candidates = tf.reshape(candidates, [batch_size, flat_width])
        top_scores, top_indices = _top_k(flat_candidates, 2 * beam_width)
        top_tokens = top_indices % vocab_size
        top_parents = top_indices // vocab_size + beam_offsets  # (B, 2k) flat rows of alive_ids
        finished = _finished_candidates(
            top_scores,
            top_tokens,
            top_parents,
            alive_ids,
            step,
            beam_width=beam_width,
            eos_id=eos_id,
            alpha=alpha,
        )
        best = _update_best(best, finished)
        alive_log_probs, positions = tf.math.top_k(
            tf.where(top_tokens == eos_id, -float("inf"), top_scores), beam_width
        )
        parents = tf.reshape(tf.gather(top_parents, positions, batch_dims=1), [-1])  # (B*k,)
        tokens = tf.reshape(tf.gather(top_tokens, positions, batch_dims=1), [-1])
        state = tf.nest.map_structure(lambda tensor: tf.gather(tensor, parents), state)
        alive_ids = _write_column(tf.gather(alive_ids, parents), step, tokens)
        return step + 1, tokens, state, alive_ids, alive_log_probs, best

    def condition(step, previous_ids, state, alive_ids, alive_log_probs, best):
        # Log-probs only fall as a hypothesis grows, and the penalty divisor is largest at max_length.
        best_possible = tf.reduce_max(alive_log_probs, axis=-1) / _length_penalty(max_length, alpha)
        return tf.logical_not(tf.reduce_all(best.scores > best_possible))

    loop_vars = (
        tf.constant(0),
        tf.fill([batch_size * beam_width], bos_id),
        initial_state,
        tf.fill([batch_size * beam_width, max_length], pad_id),
        tf.tile(tf.constant([[0.0] + [-float("inf")] * (beam_width - 1)]), [batch_size, 1]),
        _Best(
            ids=tf.fill([batch_size, max_length], pad_id),
            lengths=tf.zeros([batch_size], tf.int32),
            log_probs=tf.fill([batch_size], -float("inf")),
            scores=tf.fill([batch_size], -float("inf")),
        ),
    )
    step, _, _, alive_ids, alive_log_probs, best = tf.while_loop(
        condition, body, loop_vars, shape_invariants=_relaxed_shapes(loop_vars), maximum_iterations=max_length
    )
    best = _finish_alive(best, alive_ids, alive_log_probs, step, beam_width=beam_width, alpha=alpha)
    return DecodeResult(ids=best.ids, lengths=best.lengths, scores=best.log_probs)


def _finish_alive(best: _Best, alive_ids, alive_log_probs, step, *, beam_width: int, alpha: float) -> _Best:
    """Hypotheses still alive when the loop ends finish as they are (without EOS) if they beat the best."""
    position = tf.argmax(alive_log_probs, axis=-1, output_type=tf.int32)  # (B,)
    rows = tf.range(tf.shape(position)[0]) * beam_width + position
    log_probs = tf.gather(alive_log_probs, position, batch_dims=1)
    candidate = _Best(
        ids=tf.gather(alive_ids, rows),
        lengths=tf.fill(tf.shape(position), step),
        log_probs=log_probs,
        scores=log_probs / _length_penalty(step, alpha),
    )
    return _update_best(best, candidate)


__all__ = ["DecodeResult", "StepFunction", "beam_search", "greedy_search", "tile_beams"]

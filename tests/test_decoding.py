"""Greedy and beam search over small deterministic step functions (scripted, Markov models)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from summarizer import decoding

PAD, BOS, EOS = 0, 2, 3


def assert_well_formed(result: decoding.DecodeResult, max_length: int) -> None:
    """Tokens up to ``length`` are real (no PAD, EOS or BOS), everything after is PAD."""
    ids, lengths = result.ids.numpy(), result.lengths.numpy()
    assert ids.shape[1] == max_length and ids.dtype == np.int32 and lengths.dtype == np.int32
    for row, length in zip(ids, lengths, strict=True):
        assert not np.isin(row[:length], [PAD, BOS, EOS]).any(), row
        assert (row[length:] == PAD).all(), row


# A second-order Markov model: the next token depends on the previous id *and* on the one before it,
# which only the state carries, so a wrongly reordered beam state changes every score.


def second_order_table(vocab_size: int, seed: int, sharpness: float = 2.0) -> np.ndarray:
    """log P(next | before_previous, previous), shape (V, V, V); BOS and PAD are never likely."""
    logits = np.random.default_rng(seed).normal(size=(vocab_size, vocab_size, vocab_size)) * sharpness
    logits[..., [PAD, BOS]] = -30.0
    logits[..., EOS] -= 1.0  # a little below average, so hypotheses of varied lengths compete
    return (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)


def second_order_step(table: np.ndarray):
    table_tensor = tf.constant(table)

    def step_fn(previous_ids, state):
        before_previous, before_previous_as_float = (
            state  # (N,) int32, (N, 1) float32: both must follow the beam
        )
        log_probs = tf.gather_nd(table_tensor, tf.stack([before_previous, previous_ids], axis=1))
        as_int = tf.cast(before_previous_as_float[:, 0], tf.int32)
        desynchronised = tf.cast(tf.not_equal(as_int, before_previous), tf.float32)[:, tf.newaxis]
        log_probs += 5.0 * desynchronised  # a state tensor left unreordered changes the scores: caught
        return log_probs, (previous_ids, tf.cast(previous_ids, tf.float32)[:, tf.newaxis])

    return step_fn


def initial_state(batch_size: int, vocab_size: int, seed: int):
    first = np.random.default_rng(seed).integers(4, vocab_size, size=batch_size).astype(np.int32)
    return tf.constant(first), tf.constant(first.astype(np.float32)[:, None])


def rescore(table: np.ndarray, state, result: decoding.DecodeResult, max_length: int) -> np.ndarray:
    """Summed log-probabilities of the returned tokens (plus EOS when shorter than max_length)."""
    firsts = state[0].numpy()
    scores = []
    for first, row, length in zip(firsts, result.ids.numpy(), result.lengths.numpy(), strict=True):
        tokens = [*row[:length].tolist(), *([EOS] if length < max_length else [])]
        history, total = [int(first), BOS], 0.0
        for token in tokens:
            total += float(table[history[-2], history[-1], token])
            history.append(token)
        scores.append(total)
    return np.array(scores)


def run_greedy(table, state, batch_size, **options):
    return decoding.greedy_search(
        second_order_step(table), state, batch_size, bos_id=BOS, eos_id=EOS, **options
    )


def run_beam(table, state, batch_size, beam_width, **options):
    tiled = decoding.tile_beams(state, beam_width)
    step_fn = second_order_step(table)
    return decoding.beam_search(
        step_fn, tiled, batch_size, beam_width=beam_width, bos_id=BOS, eos_id=EOS, **options
    )


def test_tile_beams_repeats_each_item_consecutively():
    state = (tf.constant([[1, 2], [3, 4]]), tf.constant([5, 6]))
    tiled = decoding.tile_beams(state, 3)
    np.testing.assert_array_equal(tiled[0].numpy(), [[1, 2], [1, 2], [1, 2], [3, 4], [3, 4], [3, 4]])
    np.testing.assert_array_equal(tiled[1].numpy(), [5, 5, 5, 6, 6, 6])


# A scripted step function: row r of item i emits SCRIPT[i][t] at step t with log-prob 0 (every other
# token -1e9), so both searches must return exactly the script, whatever the beam bookkeeping.
SCRIPT = [[5, 6, 7, EOS], [8, EOS], [9, 9, 10, 11, 12, 13], [4, 5, 4, 5, 4, EOS]]
SCRIPT_VOCAB, SCRIPT_LENGTH = 16, 6


def scripted_step(previous_ids, state):
    item, step = state
    padded = [row + [EOS] * (SCRIPT_LENGTH + 1 - len(row)) for row in SCRIPT]
    tokens = tf.gather_nd(tf.constant(padded), tf.stack([item, step], axis=1))
    log_probs = tf.where(tf.one_hot(tokens, SCRIPT_VOCAB) > 0, 0.0, -1e9)
    return log_probs, (item, step + 1)


def expected_script() -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(SCRIPT), SCRIPT_LENGTH), np.int32)
    lengths = []
    for index, row in enumerate(SCRIPT):
        tokens = [token for token in row if token != EOS]
        ids[index, : len(tokens)] = tokens
        lengths.append(len(tokens))
    return ids, np.array(lengths)


def test_scripted_steps_decode_to_the_exact_sequences_greedy_and_beam():
    batch = len(SCRIPT)
    state = (tf.range(batch), tf.zeros([batch], tf.int32))
    expected_ids, expected_lengths = expected_script()
    settings = {"bos_id": BOS, "eos_id": EOS, "max_length": SCRIPT_LENGTH, "min_length": 1}
    greedy = decoding.greedy_search(scripted_step, state, batch, **settings)
    beam = decoding.beam_search(scripted_step, decoding.tile_beams(state, 3), batch, beam_width=3, **settings)
    for result in (greedy, beam):
        np.testing.assert_array_equal(result.ids.numpy(), expected_ids)
        np.testing.assert_array_equal(result.lengths.numpy(), expected_lengths)
        np.testing.assert_allclose(result.scores.numpy(), 0.0)
        assert_well_formed(result, SCRIPT_LENGTH)


def test_beam_width_one_equals_greedy():
    table, batch, max_length = second_order_table(24, seed=1), 16, 10
    state = initial_state(batch, 24, seed=2)
    for ngram in (0, 2):
        greedy = run_greedy(
            table, state, batch, max_length=max_length, min_length=2, no_repeat_ngram_size=ngram
        )
        beam = run_beam(
            table, state, batch, 1, max_length=max_length, min_length=2, no_repeat_ngram_size=ngram
        )
        np.testing.assert_array_equal(beam.ids.numpy(), greedy.ids.numpy())
        np.testing.assert_array_equal(beam.lengths.numpy(), greedy.lengths.numpy())
        np.testing.assert_allclose(beam.scores.numpy(), greedy.scores.numpy(), rtol=1e-6)


def test_beam_scores_at_least_greedy_and_equal_the_rescored_ids():
    """Beam search is not guaranteed to beat greedy (greedy's prefix may leave the beam), so this fixed model
    is one where it does for every item; test_beam_search_matches_a_reference_implementation checks the
    search itself on other models."""
    vocab, batch, max_length = 24, 32, 8
    table = second_order_table(vocab, seed=5)
    state = initial_state(batch, vocab, seed=6)
    greedy = run_greedy(table, state, batch, max_length=max_length)
    beam = run_beam(table, state, batch, 4, max_length=max_length, length_penalty=0.0)
    assert_well_formed(greedy, max_length)
    assert_well_formed(beam, max_length)
    assert (beam.scores.numpy() >= greedy.scores.numpy() - 1e-5).all()
    assert (beam.scores.numpy() > greedy.scores.numpy() + 1e-3).any()  # the beam does search
    # The returned score is the model's own: a misordered state or id buffer would break this.
    np.testing.assert_allclose(beam.scores.numpy(), rescore(table, state, beam, max_length), rtol=1e-5)
    np.testing.assert_allclose(greedy.scores.numpy(), rescore(table, state, greedy, max_length), rtol=1e-5)
    lengths = beam.lengths.numpy()
    assert lengths.min() < max_length - 1 and lengths.max() == max_length  # EOS and max_length both happen


def reference_beam_search(table, first, beam_width, max_length, min_length, alpha, ngram_size):
    """A plain-Python beam search with the documented rules, for one item of the second-order model."""
    vocab = table.shape[-1]
    alive, best = [(0.0, [])], (-np.inf, 0.0, [])  # alive: (log_prob, tokens); best: (penalized, raw, tokens)
    for step in range(max_length):
        candidates = []
        for beam_index, (score, tokens) in enumerate(alive):
            history = [first, BOS, *tokens]
            log_probs = table[history[-2], history[-1]].astype(np.float64)
            log_probs[[PAD, BOS]] = -np.inf
            if step < min_length:
                log_probs[EOS] = -np.inf
            context = tokens[len(tokens) - ngram_size + 1 :] if ngram_size > 1 else []
            for start in range(len(tokens) - ngram_size + 1 if ngram_size else 0):
                if tokens[start : start + ngram_size - 1] == context:
                    log_probs[tokens[start + ngram_size - 1]] = -np.inf
            candidates += [(score + log_probs[token], beam_index * vocab + token) for token in range(vocab)]
        top = sorted(candidates, key=lambda candidate: (-candidate[0], candidate[1]))[: 2 * beam_width]
        for rank, (score, flat) in enumerate(top):
            penalized = score / ((5 + step + 1) / 6) ** alpha
            if flat % vocab == EOS and rank < beam_width and penalized > best[0]:
                best = (penalized, score, alive[flat // vocab][1])
        alive = [
            (score, [*alive[flat // vocab][1], flat % vocab]) for score, flat in top if flat % vocab != EOS
        ]
        alive = alive[:beam_width]
    score, tokens = alive[0]
    if score / ((5 + max_length) / 6) ** alpha > best[0]:
        best = (0.0, score, tokens)
    return best[1], best[2]


@pytest.mark.parametrize(
    ("alpha", "ngram_size", "seed"), [(0.0, 0, 11), (0.6, 0, 12), (1.0, 2, 13), (0.6, 1, 14)]
)
def test_beam_search_matches_a_reference_implementation(alpha, ngram_size, seed):
    vocab, batch, beam_width, max_length, min_length = 16, 8, 3, 7, 2
    table = second_order_table(vocab, seed=seed, sharpness=1.0)
    state = initial_state(batch, vocab, seed=seed)
    result = run_beam(
        table,
        state,
        batch,
        beam_width,
        max_length=max_length,
        min_length=min_length,
        length_penalty=alpha,
        no_repeat_ngram_size=ngram_size,
    )
    for item, first in enumerate(state[0].numpy()):
        score, tokens = reference_beam_search(
            table, int(first), beam_width, max_length, min_length, alpha, ngram_size
        )
        length = result.lengths.numpy()[item]
        assert result.ids.numpy()[item, :length].tolist() == tokens
        np.testing.assert_allclose(result.scores.numpy()[item], score, rtol=1e-5)


def chain_table() -> np.ndarray:
    """First-order model: after BOS, x; after x, EOS 0.4 or y 0.5; y -> z 0.8; z -> EOS 0.8; little else.

    Short "x EOS": log 0.4 = -0.916. Long "x y z EOS": log 0.5 + 2 log 0.8 = -1.139. Penalized with alpha=1
    (divided by (5 + length) / 6, EOS counted): short -0.916 / (7/6) = -0.785, long -1.139 / (9/6) = -0.759.
    """
    vocab, x, y, z = 12, 4, 5, 6
    probabilities = np.full((vocab, vocab), 1e-9)
    filler = list(range(7, vocab))
    rules = {BOS: {x: 0.99}, x: {EOS: 0.4, y: 0.5}, y: {z: 0.8}, z: {EOS: 0.8}}
    for row in range(vocab):
        chosen = rules.get(row, {EOS: 0.5})
        for token, probability in chosen.items():
            probabilities[row, token] = probability
        probabilities[row, filler] = (1.0 - sum(chosen.values())) / len(filler)
    return np.log(probabilities).astype(np.float32)


def test_length_penalty_prefers_the_longer_hypothesis_and_scores_stay_raw():
    table = tf.constant(chain_table())

    def step_fn(previous_ids, state):
        return tf.gather(table, previous_ids), state

    state = decoding.tile_beams((tf.zeros([1, 1]),), 3)
    settings = {"beam_width": 3, "bos_id": BOS, "eos_id": EOS, "max_length": 6}
    short = decoding.beam_search(step_fn, state, 1, length_penalty=0.0, **settings)
    long = decoding.beam_search(step_fn, state, 1, length_penalty=1.0, **settings)
    np.testing.assert_array_equal(short.ids.numpy()[0], [4, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(long.ids.numpy()[0], [4, 5, 6, 0, 0, 0])
    np.testing.assert_allclose(short.scores.numpy(), [np.log(0.99 * 0.4)], rtol=1e-5)
    np.testing.assert_allclose(long.scores.numpy(), [np.log(0.99 * 0.5 * 0.8 * 0.8)], rtol=1e-5)


def repetitive_step(vocab_size: int):
    """Strongly prefers repeating the previous token, then EOS, then the token after the previous one."""

    def step_fn(previous_ids, state):
        logits = 10.0 * tf.one_hot(previous_ids, vocab_size)
        logits += 8.0 * tf.one_hot(tf.fill(tf.shape(previous_ids), EOS), vocab_size)
        logits += 6.0 * tf.one_hot(4 + (previous_ids + state[0]) % (vocab_size - 4), vocab_size)
        return tf.nn.log_softmax(logits), state

    return step_fn


def ngrams(tokens: list[int], size: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[index : index + size]) for index in range(len(tokens) - size + 1)]


def has_repeated_ngram(result: decoding.DecodeResult, size: int) -> bool:
    for row, length in zip(result.ids.numpy(), result.lengths.numpy(), strict=True):
        found = ngrams(row[:length].tolist(), size)
        if len(found) != len(set(found)):
            return True
    return False


@pytest.mark.parametrize("search", ["greedy", "beam"])
@pytest.mark.parametrize("ngram_size", [1, 2, 3])
def test_no_repeat_ngram_and_min_length_hold_on_every_output(search, ngram_size):
    vocab, batch, max_length, min_length = 40, 32, 12, 5
    offsets = tf.range(batch)  # each item cycles differently when it may not repeat
    step_fn = repetitive_step(vocab)

    def decode(**options):
        settings = {"bos_id": BOS, "eos_id": EOS, "max_length": max_length, **options}
        if search == "greedy":
            return decoding.greedy_search(step_fn, (offsets,), batch, **settings)
        tiled = decoding.tile_beams((offsets,), 4)
        return decoding.beam_search(step_fn, tiled, batch, beam_width=4, **settings)

    constrained = decode(min_length=min_length, no_repeat_ngram_size=ngram_size)
    unbanned = decode(min_length=min_length)
    assert has_repeated_ngram(unbanned, ngram_size)  # the model does repeat: the ban is what prevents it
    assert not has_repeated_ngram(constrained, ngram_size)
    assert (constrained.lengths.numpy() >= min_length).all()
    assert_well_formed(constrained, max_length)


@pytest.mark.parametrize("beam_width", [0, 1, 3])
def test_min_length_bans_eos_even_when_it_is_certain(beam_width):
    def step_fn(previous_ids, state):
        return tf.where(tf.one_hot(tf.fill(tf.shape(previous_ids), EOS), 10) > 0, 0.0, -20.0), state

    settings = {"bos_id": BOS, "eos_id": EOS, "max_length": 8, "min_length": 3}
    if beam_width == 0:
        result = decoding.greedy_search(step_fn, (tf.zeros([3, 1]),), 3, **settings)
    else:
        state = decoding.tile_beams((tf.zeros([3, 1]),), beam_width)
        result = decoding.beam_search(step_fn, state, 3, beam_width=beam_width, **settings)
    np.testing.assert_array_equal(result.lengths.numpy(), [3, 3, 3])
    np.testing.assert_allclose(result.scores.numpy(), [-60.0] * 3)  # three banned-EOS steps, then EOS at 0
    assert_well_formed(result, 8)


def test_searches_work_inside_tf_function_with_a_dynamic_batch():
    vocab, max_length = 24, 8
    table = second_order_table(vocab, seed=5)
    state = initial_state(6, vocab, seed=6)
    step_fn = second_order_step(table)
    signature = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 1], tf.float32)]

    @tf.function(input_signature=signature)
    def greedy(first, first_as_float):
        size = tf.shape(first)[0]
        return decoding.greedy_search(
            step_fn, (first, first_as_float), size, bos_id=BOS, eos_id=EOS, max_length=8
        )

    @tf.function(input_signature=signature)
    def beam(first, first_as_float):
        tiled = decoding.tile_beams((first, first_as_float), 3)
        return decoding.beam_search(
            step_fn,
            tiled,
            tf.shape(first)[0],
            beam_width=3,
            bos_id=BOS,
            eos_id=EOS,
            max_length=8,
            length_penalty=0.6,
        )

    eager_greedy = run_greedy(table, state, 6, max_length=max_length)
    eager_beam = run_beam(table, state, 6, 3, max_length=max_length, length_penalty=0.6)
    for compiled, eager in ((greedy(*state), eager_greedy), (beam(*state), eager_beam)):
        np.testing.assert_array_equal(compiled.ids.numpy(), eager.ids.numpy())
        np.testing.assert_allclose(compiled.scores.numpy(), eager.scores.numpy(), rtol=1e-6)
    smaller = beam(state[0][:2], state[1][:2])  # another batch size reuses the same trace
    np.testing.assert_array_equal(smaller.ids.numpy(), eager_beam.ids.numpy()[:2])


def test_top_k_matches_tensorflow_including_ties():
    rng = np.random.default_rng(7)
    for width, k in ((8000 * 4, 8), (97 * 3, 6), (50, 4)):
        values = tf.constant(rng.integers(0, 6, size=(5, width)).astype(np.float32))  # many ties
        expected_values, expected_indices = tf.math.top_k(values, k)
        found_values, found_indices = decoding._top_k(values, k)
        np.testing.assert_array_equal(found_values.numpy(), expected_values.numpy())
        np.testing.assert_array_equal(found_indices.numpy(), expected_indices.numpy())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"beam_width": 0}, "beam_width"),
        ({"min_length": 9}, "min_length"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"length_penalty": -0.5}, "length_penalty"),
        ({"eos_id": PAD}, "eos_id and pad_id"),
    ],
)
def test_bad_settings_raise(options, message):
    settings = {"beam_width": 2, "bos_id": BOS, "eos_id": EOS, "max_length": 8, **options}
    state = (tf.zeros([2, 1]),)
    with pytest.raises(ValueError, match=message):
        decoding.beam_search(lambda ids, state: (tf.zeros([2, 10]), state), state, 1, **settings)

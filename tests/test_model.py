"""Tests for summarizer.model at toy sizes: shapes, masking, step-by-step decoding, copy, coverage, saving."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from summarizer.config import TrainConfig
from summarizer.model import (
    AttentionalDecoder,
    RecurrentEncoder,
    SourceAttention,
    Summarizer,
    build_model,
    cudnn_eligible,
)

VOCAB = 40
EMBEDDING = 8
UNITS = 16
PAD_ID, BOS_ID = 0, 2


def make_model(**overrides) -> Summarizer:
    keras.utils.set_random_seed(7)
    arguments = dict(
        vocab_size=VOCAB,
        cell="gru",
        embedding_dim=EMBEDDING,
        units=UNITS,
        encoder_layers=1,
        bidirectional=True,
        attention="additive",
        copy_attention=True,
        coverage=False,
        dropout=0.1,
    )
    arguments.update(overrides)
    model = Summarizer(**arguments)
    model.build()
    return model


def make_batch(seed: int = 0, source_time: int = 7, target_time: int = 5) -> dict[str, np.ndarray]:
    """Three right-padded pairs; source tokens repeat so copy attention accumulates over positions."""
    rng = np.random.default_rng(seed)
    source = rng.integers(4, VOCAB, size=(3, source_time)).astype("int32")
    source[0, 1] = source[0, 3]
    source[0, 5:] = PAD_ID
    source[2, 3:] = PAD_ID
    target = rng.integers(4, VOCAB, size=(3, target_time + 1)).astype("int32")
    target[:, 0] = BOS_ID
    target[1, 4:] = PAD_ID
    return {"source_ids": source, "target_in": target[:, :-1], "target_out": target[:, 1:]}


def model_inputs(batch):
    return {"source_ids": batch["source_ids"], "target_in": batch["target_in"]}


def dtype_of(tensor) -> str:
    return keras.backend.standardize_dtype(tensor.dtype)


def run(model, batch) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in model(model_inputs(batch)).items()}


ALL_VARIANTS = list(
    itertools.product(["gru", "lstm"], ["additive", "multiplicative"], [False, True], [False, True])
)


@pytest.mark.parametrize(("cell", "coverage"), [("gru", False), ("lstm", True)])
def test_output_context_and_state_shapes(cell, coverage):
    model = make_model(cell=cell, coverage=coverage, encoder_layers=2)
    batch = make_batch()
    outputs = model(model_inputs(batch))
    assert tuple(outputs["log_probs"].shape) == (3, 5, VOCAB)
    assert tuple(outputs["coverage_loss"].shape) == (3, 5)
    assert tuple(outputs["attention"].shape) == (3, 5, 7)
    assert {dtype_of(value) for value in outputs.values()} == {"float32"}
    context, state = model.encode(batch["source_ids"])
    assert {name: tuple(value.shape) for name, value in context.items()} == {
        "memory": (3, 7, UNITS),
        "keys": (3, 7, UNITS),
        "source_ids": (3, 7),
        "source_mask": (3, 7),
    }
    expected_state = [(3, UNITS)] * (2 if cell == "lstm" else 1) + ([(3, 7)] if coverage else [])
    assert [tuple(value.shape) for value in state] == expected_state


@pytest.mark.parametrize(("cell", "attention", "copy_attention", "coverage"), ALL_VARIANTS)
def test_decode_step_matches_teacher_forced_call(cell, attention, copy_attention, coverage):
    model = make_model(cell=cell, attention=attention, copy_attention=copy_attention, coverage=coverage)
    batch = make_batch()
    expected = run(model, batch)["log_probs"]
    context, state = model.encode(batch["source_ids"])
    for step in range(batch["target_in"].shape[1]):
        log_probs, state = model.decode_step(batch["target_in"][:, step], state, context)
        assert log_probs.dtype == "float32"
        np.testing.assert_allclose(np.asarray(log_probs), expected[:, step], atol=1e-5)


@pytest.mark.parametrize(("copy_attention", "coverage"), [(False, False), (True, False), (True, True)])
def test_score_equals_gathered_log_probs(copy_attention, coverage):
    model = make_model(copy_attention=copy_attention, coverage=coverage, attention="multiplicative")
    batch = make_batch(seed=3)
    log_probs = run(model, batch)["log_probs"]
    expected = np.take_along_axis(log_probs, batch["target_out"][..., None], axis=-1)[..., 0]
    scored = model.score(batch)
    np.testing.assert_allclose(np.asarray(scored["target_log_probs"]), expected, atol=1e-5)
    assert tuple(scored["coverage_loss"].shape) == (3, 5)


@pytest.mark.parametrize("copy_attention", [False, True])
def test_log_probs_are_normalised(copy_attention):
    outputs = run(make_model(copy_attention=copy_attention, cell="lstm"), make_batch(seed=1))
    np.testing.assert_allclose(np.exp(outputs["log_probs"]).sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(outputs["attention"].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("attention", ["additive", "multiplicative"])
def test_padding_gets_no_attention_and_does_not_change_outputs(attention):
    model = make_model(attention=attention, coverage=True, cell="lstm")
    batch = make_batch()
    outputs = run(model, batch)
    padding = batch["source_ids"] == PAD_ID
    assert padding.sum() == 6
    assert np.all(outputs["attention"].transpose(1, 0, 2)[:, padding] == 0.0)

    longer = dict(batch, source_ids=np.pad(batch["source_ids"], ((0, 0), (0, 4))))
    np.testing.assert_allclose(run(model, longer)["log_probs"], outputs["log_probs"], atol=1e-5)

    embeddings = model.embedding.embeddings
    embeddings.assign(
        keras.ops.scatter_update(embeddings, [[PAD_ID]], 5.0 + np.zeros((1, EMBEDDING), "float32"))
    )
    changed = run(model, batch)
    real_targets = (
        batch["target_in"] != PAD_ID
    )  # target padding only follows the targets, so it never feeds them
    np.testing.assert_allclose(
        changed["log_probs"][real_targets], outputs["log_probs"][real_targets], atol=1e-5
    )
    np.testing.assert_allclose(changed["coverage_loss"], outputs["coverage_loss"], atol=1e-6)


def decoder_parts(model, batch):
    context, state = model.encode(batch["source_ids"])
    outputs, _ = model.decoder(model.embedding(batch["target_in"]), state, context)
    return {name: np.asarray(value) for name, value in outputs.items()}


def copy_distribution(attention, source_ids):
    """Reference scatter in numpy: attention mass summed onto the source tokens."""
    distribution = np.zeros((*attention.shape[:2], VOCAB))
    for row, ids in enumerate(source_ids):
        for position, token in enumerate(ids):
            distribution[row, :, token] += attention[row, :, position]
    return distribution


def softmax(logits):
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def test_copy_mixes_generation_and_scattered_attention():
    model = make_model(cell="lstm", attention="multiplicative")
    batch = make_batch(seed=2)
    parts = decoder_parts(model, batch)
    gate = parts["copy_gate"]
    expected = gate * softmax(parts["logits"]) + (1 - gate) * copy_distribution(
        parts["attention"], batch["source_ids"]
    )
    assert gate.min() > 0.05 and gate.max() < 0.95
    np.testing.assert_allclose(np.exp(run(model, batch)["log_probs"]), expected, atol=1e-5)


def test_copy_puts_mass_on_source_tokens_the_vocabulary_distribution_ignores():
    model = make_model()
    batch = make_batch(seed=4)
    rare_token = int(batch["source_ids"][0, 1])  # appears twice in the first source
    kernel, bias = model.decoder.output_projection.weights
    bias.assign(np.where(np.arange(VOCAB) == rare_token, -30.0, 0.0).astype("float32"))
    gate_bias = model.decoder.copy_gate.weights[1]
    gate_bias.assign(np.array([-4.0], "float32"))
    parts = decoder_parts(model, batch)
    probabilities = np.exp(run(model, batch)["log_probs"])[0, :, rare_token]
    attention_on_token = parts["attention"][0][:, batch["source_ids"][0] == rare_token].sum(-1)
    assert softmax(parts["logits"])[0, :, rare_token].max() < 1e-10
    assert np.all(attention_on_token > 0.1)
    np.testing.assert_array_less((1 - parts["copy_gate"][0, :, 0]) * attention_on_token - 1e-6, probabilities)
    assert probabilities.min() > 0.05


def test_coverage_loss_and_state_follow_the_attention_history():
    model = make_model(coverage=True, attention="additive")
    batch = make_batch(seed=5)
    outputs = run(model, batch)
    attention = outputs["attention"]
    history = np.cumsum(attention, axis=1) - attention  # coverage before each step
    np.testing.assert_allclose(outputs["coverage_loss"], np.minimum(attention, history).sum(-1), atol=1e-5)
    assert np.all(outputs["coverage_loss"][:, 0] == 0) and outputs["coverage_loss"][:, 1:].max() > 0.1

    context, state = model.encode(batch["source_ids"])
    for step in range(3):
        _, state = model.decode_step(batch["target_in"][:, step], state, context)
    np.testing.assert_allclose(np.asarray(state[-1]), attention[:, :3].sum(1), atol=1e-5)


def test_coverage_changes_the_attention():
    batch = make_batch(seed=5)
    model = make_model(coverage=True, attention="multiplicative")
    key_kernel = model.decoder.source_attention.key_projection.weights[0]
    key_kernel.assign(3000.0 * np.asarray(key_kernel))  # peaked attention, so coverage is far from uniform
    before = run(model, batch)["attention"]
    model.decoder.source_attention.coverage_projection.weights[0].assign(np.array([[-5.0]], "float32"))
    after = run(model, batch)["attention"]
    np.testing.assert_allclose(before[:, 0], after[:, 0], atol=1e-6)  # no coverage yet at the first step
    first_focus = before[:, 0].argmax(-1)
    rows = np.arange(len(first_focus))
    assert np.all(
        after[rows, 1, first_focus] < before[rows, 1, first_focus] - 0.1
    )  # pushed off attended words


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_every_recurrent_layer_is_cudnn_eligible(cell):
    model = make_model(cell=cell, encoder_layers=2)
    layers = model.recurrent_layers()
    assert len(layers) == 3
    assert all(cudnn_eligible(layer) for layer in layers)
    expected_class = keras.layers.GRU if cell == "gru" else keras.layers.LSTM
    assert all(isinstance(layer.forward_layer, expected_class) for layer in layers[:2])
    assert isinstance(layers[2], expected_class)


@pytest.mark.parametrize(
    "layer",
    [
        keras.layers.GRU(4, reset_after=False),
        keras.layers.LSTM(4, recurrent_dropout=0.1),
        keras.layers.LSTM(4, activation="relu"),
        keras.layers.Bidirectional(keras.layers.GRU(4, unroll=True)),
        keras.layers.SimpleRNN(4),
    ],
)
def test_cudnn_eligible_rejects_other_arguments(layer):
    assert not cudnn_eligible(layer)


def recurrent_parameters(cell, inputs, units):
    if cell == "gru":  # reset_after: separate input and recurrent biases
        return 3 * (inputs * units + units * units) + 2 * 3 * units
    return 4 * (inputs * units + units * units + units)


def expected_parameters(cell, vocab, embedding, units, layers, bidirectional, attention, copy, coverage):
    count = vocab * embedding
    for index in range(layers):
        inputs = embedding if index == 0 else units
        count += (
            2 * recurrent_parameters(cell, inputs, units // 2)
            if bidirectional
            else recurrent_parameters(cell, inputs, units)
        )
    count += recurrent_parameters(cell, embedding, units)
    count += units * units + (units * units + units + units if attention == "additive" else 0)
    count += (units if attention == "additive" else 1) if coverage else 0
    count += 2 * units * units + units * vocab + vocab
    return count + (2 * units + embedding + 1 if copy else 0)


@pytest.mark.parametrize(
    ("cell", "layers", "bidirectional", "attention", "copy", "coverage"),
    [
        ("gru", 1, True, "additive", True, False),
        ("lstm", 2, True, "multiplicative", False, True),
        ("lstm", 1, False, "additive", True, True),
        ("gru", 2, False, "multiplicative", True, False),
    ],
)
def test_parameter_count(cell, layers, bidirectional, attention, copy, coverage):
    model = make_model(
        cell=cell,
        encoder_layers=layers,
        bidirectional=bidirectional,
        attention=attention,
        copy_attention=copy,
        coverage=coverage,
    )
    assert model.count_params() == expected_parameters(
        cell, VOCAB, EMBEDDING, UNITS, layers, bidirectional, attention, copy, coverage
    )


def test_lstm_has_a_third_more_recurrent_parameters_than_gru():
    sizes = dict(embedding_dim=EMBEDDING, units=UNITS)
    difference = (
        make_model(cell="lstm", **sizes).count_params() - make_model(cell="gru", **sizes).count_params()
    )
    encoder = 2 * (recurrent_parameters("lstm", EMBEDDING, 8) - recurrent_parameters("gru", EMBEDDING, 8))
    decoder = recurrent_parameters("lstm", EMBEDDING, UNITS) - recurrent_parameters("gru", EMBEDDING, UNITS)
    assert difference == encoder + decoder > 0


# Keras's saving calls np.array on TensorFlow variables, which NumPy 2 flags; not this project's code.
@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_saved_model_reloads_with_identical_outputs(tmp_path, cell):
    model = make_model(cell=cell, copy_attention=True, coverage=True, encoder_layers=2)
    batch = make_batch(seed=6)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, Summarizer) and restored.get_config() == model.get_config()
    assert restored.count_params() == model.count_params()
    expected, actual = run(model, batch), run(restored, batch)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name])


@pytest.mark.parametrize(
    "layer",
    [
        RecurrentEncoder("lstm", 6, 2, True, 0.25, name="encoder"),
        SourceAttention("multiplicative", 6, True, name="attention"),
        AttentionalDecoder("gru", 6, 30, "additive", True, False, 0.2, name="decoder"),
    ],
)
def test_layer_config_round_trip(layer):
    restored = type(layer).from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def mixed_policy(request):
    """The global policy set to a mixed one for the test; yields its compute dtype."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    yield keras.mixed_precision.global_policy().compute_dtype
    keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_mixed_precision(cell, mixed_policy):
    model = make_model(cell=cell, coverage=True)
    assert {variable.dtype for variable in model.weights} == {"float32"}
    assert model.encoder.recurrent_layers[0].compute_dtype == mixed_policy
    assert model.decoder.recurrent.compute_dtype == mixed_policy
    # the largest matrix product (units x vocabulary) runs in the low precision too; its logits are cast to
    # float32 before the softmax, the copy mixture and the loss
    assert model.decoder.output_projection.compute_dtype == mixed_policy
    batch = make_batch()
    outputs = model(model_inputs(batch))
    assert outputs["log_probs"].dtype == "float32" and np.all(np.isfinite(outputs["log_probs"]))
    np.testing.assert_allclose(np.exp(np.asarray(outputs["log_probs"])).sum(-1), 1.0, atol=1e-3)
    context, state = model.encode(batch["source_ids"])
    assert context["memory"].dtype == mixed_policy
    log_probs, state = model.decode_step(batch["target_in"][:, 0], state, context)
    assert log_probs.dtype == "float32" and np.all(np.isfinite(log_probs))
    assert {dtype_of(value) for value in state} == {mixed_policy}


def test_build_model_maps_the_train_config():
    config = TrainConfig(
        cell="lstm",
        encoder_layers=2,
        bidirectional=False,
        embedding_dim=12,
        units=10,
        attention="multiplicative",
        copy_attention=False,
        coverage_weight=0.5,
        dropout=0.3,
    )
    model = build_model(config, vocab_size=50)
    assert model.built and model.count_params() == expected_parameters(
        "lstm", 50, 12, 10, 2, False, "multiplicative", False, True
    )
    assert (model.cell, model.coverage, model.dropout, model.pad_id) == ("lstm", True, 0.3, 0)
    assert not build_model(TrainConfig(embedding_dim=8, units=8), vocab_size=50).coverage


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cell": "lsmt"}, "train.cell: expected one of gru, lstm"),
        ({"attention": "dot"}, "train.attention"),
        ({"units": 15}, "train.units: must be even"),
        ({"dropout": 1.0}, "train.dropout"),
        ({"vocab_size": 0}, "vocab_size 0 must exceed pad_id 0"),
    ],
)
def test_invalid_arguments_name_the_parameter(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_model(**overrides)

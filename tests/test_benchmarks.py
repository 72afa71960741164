"""The benchmark runner and its parts, at tiny sizes, so the benchmarks cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import batching_speed, classic, decoding_speed, run, scaling, serving, tokenize_speed
from benchmarks.common import Shapes, figure, synthetic_batch, target_tokens
from summarizer.config import EvaluateConfig, TrainConfig
from summarizer.model import build_model
from summarizer.records import source_lengths
from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID
from tests.conftest import REPO_ROOT
from tests.helpers import build_model_directory, write_ingested_split

TINY_SHAPES = Shapes(vocab_size=50, source_length=10, target_length=6, batch_size=5)


def test_figure_met_follows_the_comparison() -> None:
    assert figure(231.4, "samples/s", 200)["met"] is True
    assert figure(199.9, "samples/s", 200)["met"] is False
    assert figure(1.3, "x", 1.2, "<=")["met"] is False
    assert figure(24.3, "%", 25.0, "~", tolerance=1.0)["met"] is True
    assert figure(23.9, "%", 25.0, "~", tolerance=1.0)["met"] is False
    assert figure(5.0, "ms")["met"] is None
    with pytest.raises(ValueError, match="comparison"):
        figure(1.0, "x", 1.0, ">")


def test_synthetic_batch_is_right_padded_teacher_forcing() -> None:
    batch = synthetic_batch(TINY_SHAPES, np.random.default_rng(0))
    target, target_in, source = batch["target_out"], batch["target_in"], batch["source_ids"]
    assert source.shape == (5, 10) and target.shape == target_in.shape == (5, 6)
    for row in range(5):
        length = int(np.count_nonzero(target[row]))
        assert length >= 3 and target[row, length - 1] == EOS_ID
        assert np.all(target[row, length:] == PAD_ID) and np.all(target[row, : length - 1] >= 4)
        assert target_in[row, 0] == BOS_ID
        assert np.array_equal(target_in[row, 1:length], target[row, : length - 1])
        assert np.all(target_in[row, length:] == PAD_ID)
        source_length = int(np.count_nonzero(source[row]))
        assert source_length >= 5 and np.all(source[row, source_length:] == PAD_ID)
    assert target_tokens(batch) == int(np.count_nonzero(target))


def test_classic_loop_generates_exactly_the_forced_length() -> None:
    keras.utils.set_random_seed(0)
    models = classic.build_classic(
        classic.ClassicConfig(vocab_size=40, embedding_dim=4, units=8, encoder_layers=2)
    )
    sources = np.random.default_rng(1).integers(4, 40, (2, 7)).astype(np.int32)
    summaries = classic.summarize(models, sources, max_length=5, min_length=5)
    assert [len(summary) for summary in summaries] == [5, 5]
    assert all(token not in (EOS_ID, PAD_ID) for summary in summaries for token in summary)
    recurrent = [layer for layer in models.training.layers if isinstance(layer, keras.layers.GRU)]
    assert len(recurrent) == 3 and all(layer.recurrent_dropout == 0.3 for layer in recurrent)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in models.training.layers) == 2


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_our_decoder_generates_the_forced_length(search: str) -> None:
    keras.utils.set_random_seed(0)
    model = build_model(TrainConfig(units=8, embedding_dim=4), TINY_SHAPES.vocab_size)
    decoding = decoding_speed.forced_length(EvaluateConfig(search=search, batch_size=3, beam_width=2), 4)
    sources = decoding_speed.source_texts(TINY_SHAPES, 3, seed=2)
    ids, lengths = decoding_speed.our_decoder(model, decoding, TINY_SHAPES.source_length)(
        tf.constant(sources)
    )
    assert lengths.numpy().tolist() == [4, 4, 4]
    assert np.all(ids.numpy() != PAD_ID) and np.all(ids.numpy() != EOS_ID)


def test_parse_time_report_reads_gnu_time_fields() -> None:
    report = (
        "\tUser time (seconds): 41.35\n\tSystem time (seconds): 1.04\n"
        "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.5\n"
        "\tMaximum resident set size (kbytes): 1091516\n"
    )
    assert tokenize_speed.parse_time_report(report) == {
        "peak_rss_megabytes": 1091.516,
        "user_seconds": 41.35,
        "system_seconds": 1.04,
        "wall_seconds": 3723.5,
    }
    with pytest.raises(ValueError, match="peak_rss_megabytes"):
        tokenize_speed.parse_time_report("User time (seconds): 1\n")


def test_replicated_corpus_repeats_every_line(tmp_path: Path) -> None:
    corpus = tokenize_speed.write_synthetic_corpus(tmp_path / "corpus", records=20, seed=0)
    copy = tokenize_speed.replicate_corpus(corpus, tmp_path / "copy", factor=3)
    for split in ("train", "val", "test"):
        lines = (corpus / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        copied = (copy / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert copied == [line for line in lines for _ in range(3)]
        assert all(set(json.loads(line)) == {"id", "text", "summary", "group"} for line in lines)


def test_scaling_efficiency_and_worker_environment() -> None:
    assert scaling.scaling_efficiency(100.0, 180.0) == pytest.approx(0.9)
    environment = scaling.worker_environment()
    assert environment["TF_NUM_INTRAOP_THREADS"] == "1" and environment["TF_NUM_INTEROP_THREADS"] == "1"
    command = scaling.horovodrun_command(2, TrainConfig(), {"train": {}}, Path("out.json"))
    assert command[1:6] == ["--gloo", "-np", "2", "-H", "localhost:2"]


def test_synthetic_batching_corpus_is_shaped_like_the_default_corpus(tmp_path: Path) -> None:
    files = batching_speed.write_synthetic_corpus(tmp_path, 2000, 80, 16, 300, seed=0)
    lengths = source_lengths(files)
    assert len(lengths) == 2000 and max(lengths) == 80 and min(lengths) >= 20
    assert lengths.count(80) / len(lengths) == pytest.approx(batching_speed.CAPPED_SOURCE_FRACTION, abs=0.04)


def test_markdown_table_lists_figures_in_group_order() -> None:
    results = {
        "groups": {"decoding": {"figures": ["b"]}, "training": {"figures": ["a"]}},
        "a": figure(250.0, "samples/s", 200),
        "b": figure(0.5, "x", 1.2, "<="),
    }
    assert run.markdown_table(results).splitlines()[2:] == [
        "| a | 250 | samples/s | >= 200 | yes |",
        "| b | 0.50 | x | <= 1.20 | yes |",
    ]


def test_quick_plan_keeps_the_product_configurations() -> None:
    params = run.load_params(REPO_ROOT / "params.yaml")
    plan = run.quick_plan(params)
    assert (plan.peer.cell, plan.peer.bidirectional, plan.peer.copy_attention) == ("lstm", True, True)
    assert (plan.classic_like.encoder_layers, plan.classic_like.bidirectional) == (
        plan.classic.encoder_layers,
        False,
    )
    assert plan.decode_texts % plan.decoding.batch_size == 0
    train = params.train
    resized = replace(
        plan.defaults, units=train.units, embedding_dim=train.embedding_dim, batch_size=train.batch_size
    )
    assert resized == train == run.full_plan(params).defaults


@pytest.mark.slow
def test_quick_run_writes_every_figure_with_its_target(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        # No model to serve: the serving group skips (tested apart, on a tiny model).
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--out",
            str(tmp_path),
            "--model-dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    results = json.loads((tmp_path / "results-quick.json").read_text(encoding="utf-8"))
    assert results["run"]["quick"] is True and results["machine"]["cores"] >= 1
    assert results["versions"]["tensorflow"] == tf.__version__
    assert set(results["groups"]) == set(run.GROUPS)
    keys = run.figure_keys(results)
    assert len(keys) == 52
    for key in keys:
        assert {"value", "unit", "target", "met"} <= set(results[key]), key
        assert f"| {key} |" in result.stdout
    value = {key: results[key]["value"] for key in keys}
    assert value["train_classic_shapes_speedup"] == pytest.approx(
        value["train_classic_shapes_samples_per_second"] / value["train_classic_samples_per_second"], rel=1e-3
    )
    assert value["scaling_efficiency"] == pytest.approx(
        value["scaling_two_workers_samples_per_second"]
        / (2 * value["scaling_one_worker_samples_per_second"]),
        rel=1e-3,
    )
    assert results["train_peer_shapes_samples_per_second"]["met"] == (
        value["train_peer_shapes_samples_per_second"] >= 200
    )
    assert (
        results["tokenize_20x_megabytes_per_second"]["examples"]
        == 20 * results["tokenize_megabytes_per_second"]["examples"]
    )
    assert results["scaling_one_worker_samples_per_second"]["intra_op_threads"] == 1
    assert results["scaling_accumulated_two_workers_samples_per_second"]["accumulate_steps"] == 2
    assert results["scaling_accumulated_efficiency"]["target"] == 0.85
    assert value["batching_tokens_speedup"] == pytest.approx(
        value["batching_tokens_target_tokens_per_second"]
        / value["batching_examples_target_tokens_per_second"],
        rel=1e-3,
    )
    assert results["batching_tokens_samples_per_second"]["corpus"].startswith("synthetic")
    assert 0 < value["batching_examples_source_padding_percent"] < 100
    assert value["checkpoint_save_seconds"] > 0 and value["checkpointing_on_samples_per_second"] > 0
    assert results["checkpointing_cost_percent"]["met"] == (value["checkpointing_cost_percent"] <= 3.0)
    assert value["determinism_cost_percent"] == pytest.approx(
        100 * (1 - value["determinism_on_samples_per_second"] / value["determinism_off_samples_per_second"]),
        rel=1e-3,
    )
    assert run.main(["--quick", "--out", str(tmp_path), "--table"]) == 0
    assert "| scaling_efficiency |" in capsys.readouterr().out


@pytest.mark.slow
def test_serving_group_times_a_real_model_server(tmp_path: Path) -> None:
    tiny = build_model_directory(tmp_path / "tiny")
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "serving", "--out", str(tmp_path)]
    result = subprocess.run(
        [*command, "--model-dir", str(tiny.model_dir)],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    results = json.loads((tmp_path / "results-quick.json").read_text(encoding="utf-8"))
    assert results["groups"]["serving"]["figures"] == [
        "serving_one_text_milliseconds",
        "serving_batch64_milliseconds",
    ]
    for key in results["groups"]["serving"]["figures"]:
        assert results[key]["value"] > 0 and len(results[key]["repetitions"]) == 2, key
    assert "| serving_batch64_milliseconds |" in result.stdout


def test_serving_group_skips_without_a_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plan = run.quick_plan(run.load_params(REPO_ROOT / "params.yaml"))
    options = run.parse_arguments(["--model-dir", str(tmp_path)])
    assert run.run_serving(plan, options) == {}
    assert f"serving skipped: {tmp_path} holds no trained model" in capsys.readouterr().err


def test_serving_texts_come_from_the_test_split_else_the_fallback(tmp_path: Path) -> None:
    split = write_ingested_split(tmp_path / "test.jsonl", [("first text here", "a"), ("second text", "b")])
    assert serving.benchmark_texts(split, 3) == ["first text here", "second text", "first text here"]
    assert serving.benchmark_texts(tmp_path / "absent.jsonl", 4)[3] == serving.FALLBACK_TEXTS[0]


def test_table_without_results_says_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run.main(["--out", str(tmp_path), "--table"]) == 1
    assert "no results yet; run python -m benchmarks.run" in capsys.readouterr().err

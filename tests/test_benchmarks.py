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

from benchmarks import (
    batching_speed,
    ceiling,
    classic,
    decoding_speed,
    flops,
    run,
    scaling,
    serving,
    tokenize_speed,
)
from benchmarks.common import Shapes, figure, synthetic_batch, target_tokens
from summarizer import records
from summarizer.config import CPU_CYCLE_TIME_MS, EvaluateConfig, TrainConfig
from summarizer.model import build_model
from summarizer.records import example_lengths
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
    assert scaling.scaling_efficiency(100.0, 200.0, workers=4) == pytest.approx(0.5)
    environment = scaling.worker_environment()
    assert environment["TF_NUM_INTRAOP_THREADS"] == "1" and environment["TF_NUM_INTEROP_THREADS"] == "1"
    command = scaling.horovodrun_command(2, {"train": {}}, Path("out.json"))
    assert command[1:6] == ["--gloo", "-np", "2", "-H", "localhost:2"]


def test_synthetic_batching_corpus_is_shaped_like_the_default_corpus(tmp_path: Path) -> None:
    files = batching_speed.write_synthetic_corpus(tmp_path, 2000, 80, 16, 300, seed=0)
    lengths = [source for source, _ in example_lengths(files)]
    assert len(lengths) == 2000 and max(lengths) == 80 and min(lengths) >= 20
    assert lengths.count(80) / len(lengths) == pytest.approx(batching_speed.CAPPED_SOURCE_FRACTION, abs=0.04)


def test_markdown_table_lists_figures_in_group_order() -> None:
    results = {
        "groups": {"decoding": {"figures": ["b"]}, "training": {"figures": ["a"]}},
        "a": figure(250.0, "samples/s", 200),
        "b": figure(0.5, "x", 1.2, "<="),
    }
    assert run.markdown_table(results).splitlines()[2:] == [
        "| a | 250 | samples/s | >= 200 | yes |  |",
        "| b | 0.50 | x | <= 1.20 | yes |  |",
    ]
    results["groups"]["ceiling"] = {"figures": ["c"]}
    results["c"] = figure(0.4321, "of peak", throughput_figure="a")
    assert run.markdown_table(results).splitlines()[2] == "| a | 250 | samples/s | >= 200 | yes | 43.2% |"


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


# A model small enough to count by hand: bidirectional GRU (2 units per direction), embeddings 2, units 4,
# vocabulary 10, additive attention, no copy, no dropout; source 3 and target 2 tokens; batch 5.
HAND_CONFIG = TrainConfig(
    units=4, embedding_dim=2, copy_attention=False, dropout=0.0, coverage_weight=0.0, batch_size=5
)
HAND_SHAPES = Shapes(vocab_size=10, source_length=3, target_length=2, batch_size=5)


def test_flop_count_of_a_tiny_model_matches_the_hand_count() -> None:
    terms = flops.forward_terms(HAND_CONFIG, 10, 3, 2)
    # matrix products, 2 FLOPs per multiply-add:
    assert terms["encoder_0"][0] == 2 * 3 * (2 * 3 * 2 * (2 + 2))  # 2 directions x 3 steps x 3 gates
    assert terms["attention_keys"][0] == 3 * 2 * 4 * 4
    assert terms["decoder_recurrent"][0] == 2 * (2 * 3 * 4 * (2 + 4))
    assert terms["attention"][0] == 2 * 2 * 4 * 4 + 6 * 2 * 4 + 6 * 2 * 4  # query, energy, context (6 pairs)
    assert terms["combine"][0] == 2 * 2 * 8 * 4 and terms["output_projection"][0] == 2 * 2 * 4 * 10
    # 288 + 96 + 288 + 160 + 128 + 160 = 1120 products; element-wise: encoder 2 x 3 x 17 x 2 = 204,
    # decoder 2 x 17 x 4 = 136, attention 8 + 48 + 36 = 92, combine 8, output bias 20, loss 2 x 44 = 88
    assert flops.totals(terms) == {"matmul": 1120, "elementwise": 548, "total": 1668}
    # parameters: embedding 20, encoder 2 x 36, keys 16, query + bias + energy 24, decoder 96, combine 32,
    # output 50 = 310; the optimizer's 17 FLOPs each per step are shared by the 5 examples of the batch
    assert flops.parameter_count(HAND_CONFIG, 10) == 310
    counted = flops.train_flops_per_example(HAND_CONFIG, 10, 3, 2, batch_size=5)
    assert counted["matmul"] == 3 * 1120
    assert counted["total"] == pytest.approx(3 * 1668 + 17 * 310 / 5)
    # lengths may be arrays, one per example; the s x t attention term makes the mean differ from f(mean)
    per_example = flops.train_flops_per_example(HAND_CONFIG, 10, np.array([3, 1]), np.array([2, 2]), 5)
    one = flops.train_flops_per_example(HAND_CONFIG, 10, 1, 2, 5)
    assert per_example["total"].tolist() == pytest.approx([counted["total"], one["total"]])


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"cell": "lstm", "attention": "multiplicative", "coverage_weight": 1.0},
        {"bidirectional": False, "encoder_layers": 2, "copy_attention": False},
        {"cell": "lstm", "encoder_layers": 2, "coverage_weight": 0.5},
    ],
)
def test_parameter_count_from_the_shapes_matches_keras(changes: dict) -> None:
    config = replace(TrainConfig(units=8, embedding_dim=6), **changes)
    assert flops.parameter_count(config, 40) == build_model(config, 40).count_params()


@pytest.mark.parametrize("changes", [{}, {"cell": "lstm", "encoder_layers": 2, "copy_attention": False}])
def test_profiler_counts_the_products_the_shapes_predict(changes: dict) -> None:
    config = replace(
        HAND_CONFIG, **{"units": 8, "embedding_dim": 6, "dropout": 0.1, "copy_attention": True, **changes}
    )
    shapes = Shapes(vocab_size=40, source_length=7, target_length=5, batch_size=3)
    check = ceiling.check_count(config, shapes, seed=0)
    ratios = check["ratio_profiler_over_analytic"]
    # every matrix product of the forward pass, the recurrent ones inside the While loops included
    assert ratios["forward_matmul"] == pytest.approx(1.0, abs=1e-6)
    assert ratios["train_matmul"] == pytest.approx(1.0, abs=1e-6)
    assert check["profiler_train_over_forward_matmul"] == pytest.approx(flops.BACKWARD_MULTIPLIER, abs=1e-3)
    # the profiler alone (no loop bodies) misses the recurrent products
    analytic = check["analytic_mflops"]
    assert check["profiler_forward_without_loops_mflops"] < analytic["forward_matmul"]
    loops = 2 * config.encoder_layers + 1  # each direction of each encoder layer, the decoder
    assert check["loops"] == {"forward": loops, "train_step": 2 * loops}  # and their gradient loops


def _write_train_shards(directory: Path, pairs: list[tuple[list[int], list[int]]], shards: int) -> list[str]:
    with records.ShardedWriter(directory, "train", shards) as writer:
        for source, target in pairs:
            writer.write(records.make_example(source, target))
    return records.list_shards(directory, "train")


def test_padding_share_of_a_tiny_fixture_is_the_hand_count(tmp_path: Path) -> None:
    # (source, target): example i goes to shard i % 2, and each rank of 2 reads one shard
    pairs = [
        ([5, 6, 7], [8, 3]),  # shard 0
        ([5, 6], [3]),  # shard 1
        ([9], [8, 3]),  # shard 0
        ([7, 7], [5, 6, 8, 3]),  # shard 1
    ]
    files = _write_train_shards(tmp_path, pairs, shards=2)
    config = replace(HAND_CONFIG, batch_size=2)
    share = ceiling.padding_share(files, config, vocab_size=10, workers=2, max_source_tokens=3)
    # one batch of 2 per rank, whatever the shuffle: rank 0 sources padded to 3 (2 PAD of 6 slots), targets
    # to 2 (0 of 4); rank 1 sources to 2 (0 of 4), targets to 4 (3 of 8)
    assert (share["steps_per_rank"], share["batches"], share["examples"]) == (1, 2, 4)
    assert share["source_padding_fraction"] == pytest.approx(2 / 10)
    assert share["target_padding_fraction"] == pytest.approx(3 / 12)
    assert share["at_cap_fraction"] == pytest.approx(1 / 4)
    assert share["mean_padded_source_length"] == pytest.approx(2.5) and share["mean_source_length"] == 2.0

    def train(source: int, target: int) -> float:
        return flops.train_flops_per_example(config, 10, source, target, 2)["total"]

    padded = 2 * train(3, 2) + 2 * train(2, 4)
    real = train(3, 2) + train(1, 2) + train(2, 1) + train(2, 4)
    assert share["padded_mflops_per_example"] == pytest.approx(padded / 4 / 1e6)
    assert share["useful_flops_fraction"] == pytest.approx(real / padded)


@pytest.mark.slow
def test_quick_ceiling_group_counts_and_measures(tmp_path: Path) -> None:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "ceiling", "--out", str(tmp_path)]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-5000:]
    results = json.loads((tmp_path / "results-quick.json").read_text(encoding="utf-8"))
    keys = results["groups"]["ceiling"]["figures"]
    assert "ceiling_scaling_two_workers_fraction_of_peak" not in keys  # scaling did not run in this run
    value = {key: results[key]["value"] for key in keys}
    assert value["ceiling_peak_gflops"] > 0 and value["ceiling_peak_per_rank_two_ranks_gflops"] > 0
    assert results["ceiling_peak_one_thread_gflops"]["intra_op_threads"] == 1
    assert [
        rank["intra_op_threads"] for rank in results["ceiling_peak_per_rank_two_ranks_gflops"]["ranks"]
    ] == [
        1,
        1,
    ]
    for name in ("classic_shapes", "peer_shapes", "defaults"):
        prefix = f"ceiling_{name}"
        ratios = results[f"{prefix}_profiler_over_analytic"]["ratio_profiler_over_analytic"]
        assert ratios["train_matmul"] == pytest.approx(1.0, abs=1e-6), name
        assert "measured_here" in results[f"{prefix}_fraction_of_peak"]  # the training group did not run
        assert value[f"{prefix}_fraction_of_peak"] == pytest.approx(
            value[f"{prefix}_achieved_gflops"] / value["ceiling_peak_gflops"], rel=1e-3, abs=1e-4
        )  # figures keep 4 decimals
    assert 0 < value["ceiling_corpus_source_padding_fraction"] < 1  # --quick: synthetic shards
    assert 0 < value["ceiling_corpus_useful_flops_fraction"] < 1
    assert "| ceiling_peak_gflops |" in result.stdout


def test_padding_figures_skip_without_tokenized_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plan = run.full_plan(run.load_params(REPO_ROOT / "params.yaml"))
    options = run.parse_arguments(["--tokenized", str(tmp_path / "absent")])
    assert run._padding_figures(plan, options) == {}
    assert "ceiling: padding skipped: no train shards" in capsys.readouterr().err


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
        timeout=1500,  # every group; the ceiling added 135 s at a load average of 11 (2026-11-30)
    )
    assert result.returncode == 0, result.stderr[-5000:]
    results = json.loads((tmp_path / "results-quick.json").read_text(encoding="utf-8"))
    assert results["run"]["quick"] is True and results["machine"]["cores"] >= 1
    assert results["versions"]["tensorflow"] == tf.__version__
    assert set(results["groups"]) == set(run.GROUPS)
    keys = run.figure_keys(results)
    # 52, the overlapped allreduce's 2 (2 workers, efficiency), Horovod's own cycle time's 2, the ceiling's 24
    # (3 peaks, 5 per model of ours, 2 scaling, 4 padding)
    assert len(keys) == 52 + 2 + 2 + 24
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
    assert results["scaling_overlap_two_workers_samples_per_second"]["overlap_allreduce"] is True
    assert value["scaling_overlap_efficiency"] == pytest.approx(
        value["scaling_overlap_two_workers_samples_per_second"]
        / (2 * value["scaling_one_worker_samples_per_second"]),
        rel=1e-3,
    )
    assert results["scaling_two_workers_samples_per_second"]["overlap_allreduce"] is False
    # cycle_time_ms: auto came to the CPU value on the ranks; the comparison series ran Horovod's 1 ms
    assert results["scaling_two_workers_samples_per_second"]["cycle_time_ms"] == CPU_CYCLE_TIME_MS
    assert results["scaling_horovod_cycle_two_workers_samples_per_second"]["cycle_time_ms"] == 1.0
    assert value["scaling_horovod_cycle_efficiency"] == pytest.approx(
        value["scaling_horovod_cycle_two_workers_samples_per_second"]
        / (2 * value["scaling_one_worker_samples_per_second"]),
        rel=1e-3,
    )
    assert results["scaling_accumulated_efficiency"]["target"] == 0.85
    assert len(results["scaling_accumulated_efficiency"]["per_round"]) == 1  # --quick: one round
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
    # the ceiling took the training and scaling groups' figures of this run, and the table shows them
    fraction = results["ceiling_peer_shapes_fraction_of_peak"]
    assert fraction["throughput_figure"] == "train_peer_shapes_samples_per_second"
    assert value["ceiling_peer_shapes_achieved_gflops"] == pytest.approx(
        value["train_peer_shapes_samples_per_second"]
        * value["ceiling_peer_shapes_train_mflops_per_example"]
        / 1000,
        rel=1e-3,
        abs=1e-3,
    )
    row = next(line for line in result.stdout.splitlines() if line.startswith("| scaling_efficiency |"))
    assert row.endswith("|  |")
    row = next(line for line in result.stdout.splitlines() if line.startswith("| scaling_two_workers_"))
    assert row.endswith(f"| {100 * value['ceiling_scaling_two_workers_fraction_of_peak']:.1f}% |")
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

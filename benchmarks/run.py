"""Run the benchmarks, print a Markdown table and write the results JSON.

Usage: python -m benchmarks.run [--quick] [--only GROUP ...] [--out benchmarks/results] [--params params.yaml]
       python -m benchmarks.run --table      (print the table of the results file, measure nothing)

Groups: training, batching, decoding, scaling, ceiling, checkpointing, precision, determinism, parameters,
tokenize, serving (skipped, with a message, when --model-dir has no model). Each figure is stored under its
own key with its target beside it (``{"value": ..., "target": ..., "met": ...}``); ``--only`` re-measures
some groups and keeps the other figures of an existing results file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import (
    batching_speed,
    ceiling,
    common,
    decoding_speed,
    determinism,
    flops,
    scaling,
    serving,
    tokenize_speed,
    training_speed,
)
from benchmarks.classic import ClassicConfig, build_classic
from benchmarks.common import Shapes, figure
from benchmarks.training_speed import Timing
from summarizer import records
from summarizer.config import ConfigError, EvaluateConfig, Params, TokenizeConfig, TrainConfig, load_params
from summarizer.io import read_json, write_json
from summarizer.model import build_model
from summarizer.tokenization import PAD_ID, Tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
HOROVOD_CYCLE_TIME_MS = 1.0  # Horovod's default cycle, compared with train.horovod.cycle_time_ms: auto
WORKER_WORDS = {1: "one_worker", 2: "two_workers", 4: "four_workers"}
GROUPS = (
    "training",
    "batching",
    "decoding",
    "scaling",
    "ceiling",
    "checkpointing",
    "precision",
    "determinism",
    "parameters",
    "tokenize",
    "serving",
)
SEED = 1234
CHILD_FLAG = "--in-process"
# The peer: OpenNMT-py 3.5.1 on this 2-core CPU (measured by them; not re-measured here).
PEER = {
    "train_samples_per_second": (119.0, 133.0),
    "greedy_summaries_per_second": (188.0, 198.0),
    "beam4_summaries_per_second": (82.0, 82.0),
    "no_copy": {"train_samples_per_second": 170.0, "greedy": 588.0, "beam4": 143.0},
}
TARGETS = {
    "classic_speedup": 2.0,
    "peer_train_samples_per_second": 200.0,
    "greedy_summaries_per_second": 400.0,
    "greedy_speedup": 100.0,
    "beam4_summaries_per_second": 165.0,
    "beam4_speedup": 25.0,
    "scaling_efficiency": 0.8,
    "scaling_accumulated_efficiency": 0.85,  # issue 19: with gradient accumulation, at the peer's shapes
    "determinism_cost_percent": 5.0,  # "where it costs little": op determinism may slow the step by this much
    "gru_fewer_recurrent_percent": 25.0,
    "tokenize_rss_ratio": 1.2,  # "flat": peak RSS grows by at most 20% when the corpus grows
    "checkpointing_cost_percent": 3.0,  # stop/checkpoint control at the default interval, vs none
}


@dataclass(frozen=True)
class Plan:
    """Every size and configuration of one run (full or --quick)."""

    quick: bool
    classic: ClassicConfig
    classic_like: TrainConfig  # our model with the classic recipe's sizes
    peer: TrainConfig  # our model with the peer's sizes, copy attention on
    defaults: TrainConfig  # params.yaml's train section
    peer_shapes: Shapes
    default_shapes: Shapes
    classic_timing: Timing
    timing: Timing
    scaling_timing: Timing
    scaling_workers: tuple[int, ...]  # worker counts of the accumulated scaling figures; the first is 1
    scaling_rounds: int  # the worker counts are measured alternately, this many times each
    accumulate_steps: int  # micro-batches per optimizer step in the scaling group's accumulated figures
    determinism_rounds: int  # op determinism off and on are measured alternately, this many times each
    decoding: EvaluateConfig  # params.yaml's evaluate section
    decode_texts: int
    classic_decode_texts: int
    classic_decode_chunks: int
    decode_repetitions: int
    tokenize: TokenizeConfig
    replication_factors: tuple[int, ...]  # tokenize copies with each line repeated this many times
    synthetic_records: int  # --quick tokenizes a synthetic corpus of this many train records
    horovod_timeout_seconds: float
    peak_matrix_size: int  # the ceiling's float32 matmul: (size x size) @ (size x size)
    peak_repetitions: int  # its best of this many
    ceiling_timing: Timing  # training measured by the ceiling group when the training group did not run


def _peer_config(defaults: TrainConfig) -> TrainConfig:
    return replace(
        defaults,
        cell="lstm",
        encoder_layers=1,
        bidirectional=True,
        embedding_dim=128,
        units=256,
        attention="additive",
        copy_attention=True,
        coverage_weight=0.0,
        label_smoothing=0.0,
        precision="float32",
        batch_size=64,
    )


def _classic_like(defaults: TrainConfig, classic: ClassicConfig) -> TrainConfig:
    return replace(
        defaults,
        cell="gru",
        encoder_layers=classic.encoder_layers,
        bidirectional=False,
        embedding_dim=classic.embedding_dim,
        units=classic.units,
        attention="additive",
        copy_attention=False,
        coverage_weight=0.0,
        label_smoothing=0.0,
        dropout=classic.dropout,
        precision="float32",
    )


def full_plan(params: Params) -> Plan:
    train = params.train
    classic = ClassicConfig(
        vocab_size=8000,
        embedding_dim=128,
        units=256,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        clipnorm=train.clipnorm,
    )
    tokenize = params.tokenize
    return Plan(
        quick=False,
        classic=classic,
        classic_like=_classic_like(train, classic),
        peer=_peer_config(train),
        defaults=train,
        peer_shapes=Shapes(vocab_size=8000, source_length=80, target_length=16, batch_size=64),
        default_shapes=Shapes(
            tokenize.max_vocab_size, tokenize.max_source_tokens, tokenize.max_target_tokens, train.batch_size
        ),
        classic_timing=Timing(warmup_steps=4, steps=6, repetitions=3),
        timing=Timing(warmup_steps=8, steps=8, repetitions=5),
        scaling_timing=Timing(warmup_steps=6, steps=16, repetitions=5),
        scaling_workers=(1, 2, 4),
        scaling_rounds=2,
        accumulate_steps=4,
        determinism_rounds=2,
        decoding=params.evaluate,
        decode_texts=8 * params.evaluate.batch_size,
        classic_decode_texts=64,
        classic_decode_chunks=4,
        decode_repetitions=3,
        tokenize=tokenize,
        replication_factors=(10, 20),
        synthetic_records=0,
        horovod_timeout_seconds=600,
        peak_matrix_size=4096,
        peak_repetitions=4,
        ceiling_timing=Timing(warmup_steps=4, steps=8, repetitions=3),
    )


def quick_plan(params: Params) -> Plan:
    """Tiny sizes: minutes of work become seconds; the figures mean nothing, the code paths are the same."""
    plan = full_plan(params)
    classic = replace(plan.classic, vocab_size=300, embedding_dim=8, units=16, encoder_layers=2)
    shapes = Shapes(vocab_size=300, source_length=12, target_length=6, batch_size=8)
    small = {"units": 16, "embedding_dim": 8, "batch_size": 8}
    return replace(
        plan,
        quick=True,
        classic=classic,
        classic_like=replace(_classic_like(params.train, classic), **small),
        peer=replace(plan.peer, **small),
        defaults=replace(plan.defaults, **small),
        peer_shapes=shapes,
        default_shapes=shapes,
        classic_timing=Timing(warmup_steps=1, steps=2, repetitions=2),
        timing=Timing(warmup_steps=1, steps=2, repetitions=2),
        scaling_timing=Timing(warmup_steps=1, steps=2, repetitions=2),
        scaling_workers=(1, 2),
        scaling_rounds=1,
        accumulate_steps=2,
        determinism_rounds=1,
        decoding=replace(params.evaluate, batch_size=4),
        decode_texts=8,
        classic_decode_texts=4,
        classic_decode_chunks=2,
        decode_repetitions=2,
        tokenize=replace(params.tokenize, vocab_size=100, input_sentence_size=1000, num_shards=2),
        replication_factors=(10, 20),
        synthetic_records=200,
        horovod_timeout_seconds=300,
        peak_matrix_size=256,
        peak_repetitions=2,
        ceiling_timing=Timing(warmup_steps=1, steps=2, repetitions=2),
    )


# ----------------------------------------------------------------------------------------------------------
# Groups: each returns {figure key: figure}


def run_training(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """Classic model.fit vs our train step at the classic sizes; ours at the peer's sizes and defaults."""
    shapes = replace(plan.peer_shapes, vocab_size=plan.classic.vocab_size)
    classic = training_speed.measure_classic_training(plan.classic, shapes, plan.classic_timing, SEED)
    ours = training_speed.measure_our_training(plan.classic_like, shapes, plan.timing, SEED)
    peer = training_speed.measure_our_training(plan.peer, plan.peer_shapes, plan.timing, SEED)
    defaults = training_speed.measure_our_training(plan.defaults, plan.default_shapes, plan.timing, SEED)
    speedup = ours["samples_per_second"] / classic["samples_per_second"]
    peer_low, peer_high = PEER["train_samples_per_second"]
    return {
        "train_classic_samples_per_second": _rate_figure(classic, "samples/s", None, parameters=True),
        "train_classic_target_tokens_per_second": figure(classic["target_tokens_per_second"], "tokens/s"),
        "train_classic_shapes_samples_per_second": _rate_figure(
            ours, "samples/s", TARGETS["classic_speedup"] * classic["samples_per_second"], parameters=True
        ),
        "train_classic_shapes_target_tokens_per_second": figure(ours["target_tokens_per_second"], "tokens/s"),
        "train_classic_shapes_speedup": figure(speedup, "x classic", TARGETS["classic_speedup"]),
        "train_peer_shapes_samples_per_second": _rate_figure(
            peer,
            "samples/s",
            TARGETS["peer_train_samples_per_second"],
            parameters=True,
            peer=f"{peer_low:g}-{peer_high:g}",
            versus_peer=round(peer["samples_per_second"] / peer_high, 3),
        ),
        "train_peer_shapes_target_tokens_per_second": figure(peer["target_tokens_per_second"], "tokens/s"),
        "train_defaults_samples_per_second": _rate_figure(defaults, "samples/s", None, parameters=True),
        "train_defaults_target_tokens_per_second": figure(defaults["target_tokens_per_second"], "tokens/s"),
        "train_defaults_speedup_vs_classic": figure(
            defaults["samples_per_second"] / classic["samples_per_second"], "x classic"
        ),
    }


def run_batching(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """Our default model's step on ``examples`` vs ``tokens`` batches of the default corpus' lengths.

    The full run reads ``data/tokenized`` when the tokenize stage has written it (else, and with --quick, a
    synthetic corpus shaped like it); the token budget is ``batch_size * max_source_tokens``.
    """
    shapes = plan.default_shapes
    data_dir = None if plan.quick else REPO_ROOT / "data" / "tokenized"
    result = batching_speed.compare(
        plan.defaults,
        data_dir,
        shapes.source_length,
        shapes.target_length,
        shapes.vocab_size,
        plan.timing,
        SEED,
    )
    examples, tokens = result["examples"], result["tokens"]
    details = {"corpus": result["corpus"]}
    figures = {}
    for kind, measured, batch_size in (
        ("examples", examples, plan.defaults.batch_size),
        ("tokens", tokens, result["token_budget"]),
    ):
        batch = {
            "batch_size": batch_size,
            "examples_per_batch": round(measured["examples_per_batch"], 1),
            "repetitions": measured["repetitions"],
        }
        figures[f"batching_{kind}_samples_per_second"] = figure(
            measured["samples_per_second"], "samples/s", **batch, **details
        )
        figures[f"batching_{kind}_target_tokens_per_second"] = figure(
            measured["target_tokens_per_second"], "tokens/s", repetitions=measured["token_repetitions"]
        )
        for name in ("source", "target"):
            figures[f"batching_{kind}_{name}_padding_percent"] = figure(
                measured[f"{name}_padding_percent"], f"% of {name} positions"
            )
    figures["batching_tokens_speedup"] = figure(
        tokens["target_tokens_per_second"] / examples["target_tokens_per_second"],
        "x examples (target tokens/s)",
    )
    return figures


def _rate_figure(
    result: dict[str, Any], unit: str, target: float | None, parameters: bool = False, **details: Any
) -> dict[str, Any]:
    extra = {"repetitions": result["repetitions"], "step_milliseconds": round(result["step_milliseconds"], 1)}
    if parameters:
        extra["parameters"] = result["parameters"]
    if target is not None:
        target = round(target, 2)
    return figure(result["samples_per_second"], unit, target, **extra, **details)


def run_decoding(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """The classic loop (classic model) vs our greedy and beam search (our model at the peer's sizes)."""
    length = plan.peer_shapes.target_length
    classic_shapes = replace(plan.peer_shapes, vocab_size=plan.classic.vocab_size)
    classic_models = build_classic(plan.classic)
    classic_sources = decoding_speed.source_texts(classic_shapes, plan.classic_decode_texts, SEED)
    classic = decoding_speed.measure_classic_decoding(
        classic_models, classic_sources, length, plan.classic_decode_chunks
    )
    with training_speed.dtype_policy("float32"):
        model = build_model(plan.peer, plan.peer_shapes.vocab_size)
    sources = decoding_speed.source_texts(plan.peer_shapes, plan.decode_texts, SEED)
    forced = decoding_speed.forced_length(plan.decoding, length)
    greedy = decoding_speed.measure_our_decoding(
        model, replace(forced, search="greedy"), sources, plan.decode_repetitions
    )
    beam = decoding_speed.measure_our_decoding(
        model, replace(forced, search="beam", beam_width=4), sources, plan.decode_repetitions
    )
    return _decoding_figures(classic, greedy, beam, forced)


def _decoding_figures(
    classic: dict[str, Any], greedy: dict[str, Any], beam: dict[str, Any], forced: EvaluateConfig
) -> dict[str, Any]:
    classic_rate = classic["summaries_per_second"]
    settings = {
        "tokens_per_summary": forced.max_length,
        "batch_size": forced.batch_size,
        "no_repeat_ngram_size": forced.no_repeat_ngram_size,
    }
    return {
        "decode_classic_summaries_per_second": figure(
            classic_rate, "summaries/s", repetitions=classic["repetitions"], texts=classic["texts"]
        ),
        "decode_greedy_summaries_per_second": figure(
            greedy["summaries_per_second"],
            "summaries/s",
            TARGETS["greedy_summaries_per_second"],
            repetitions=greedy["repetitions"],
            texts=greedy["texts"],
            peer="{:g}-{:g}".format(*PEER["greedy_summaries_per_second"]),
            **settings,
        ),
        "decode_greedy_speedup": figure(
            greedy["summaries_per_second"] / classic_rate, "x classic loop", TARGETS["greedy_speedup"]
        ),
        "decode_beam4_summaries_per_second": figure(
            beam["summaries_per_second"],
            "summaries/s",
            TARGETS["beam4_summaries_per_second"],
            repetitions=beam["repetitions"],
            texts=beam["texts"],
            peer="{:g}".format(PEER["beam4_summaries_per_second"][0]),
            length_penalty=forced.length_penalty,
            **settings,
        ),
        "decode_beam4_speedup": figure(
            beam["summaries_per_second"] / classic_rate, "x classic loop", TARGETS["beam4_speedup"]
        ),
    }


def run_scaling(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """horovodrun with 1 and 2 workers of one thread each, our model at the peer's sizes; then with
    ``plan.accumulate_steps`` micro-batches per optimizer step (one gradient allreduce per that many batches)
    and ``plan.scaling_workers`` (1, 2 and, in the full run, 4) workers. ``scaling_overlap_*``: 2 workers with
    ``train.horovod.overlap_allreduce`` (one allreduce per gradient tensor, started during the backward pass);
    ``scaling_horovod_cycle_*``: 2 workers with Horovod's own 1 ms cycle instead of ``cycle_time_ms: auto``
    (20 ms on CPUs); both measured alternately with the plain 1 and 2 workers, their efficiencies against the
    plain one-worker rate.

    The worker counts are measured alternately, ``plan.scaling_rounds`` times each, so a slow spell of this
    shared machine does not fall on one worker count only; each figure is the median of all its repetitions.
    Each efficiency also records its spread: the efficiency of every round (that round's medians). Four
    workers on a machine with fewer cores share them: that figure has no target.
    """
    figures = {}
    accumulated = replace(plan.peer, accumulate_steps=plan.accumulate_steps)
    # the worker times optimizer steps: the same number of micro-batches as the plain figures
    plain_timing = plan.scaling_timing
    accumulated_timing = replace(
        plain_timing,
        warmup_steps=max(1, plain_timing.warmup_steps // plan.accumulate_steps),
        steps=max(1, plain_timing.steps // plan.accumulate_steps),
    )
    overlapped = replace(plan.peer, horovod=replace(plan.peer.horovod, overlap_allreduce=True))
    horovod_cycle = replace(
        plan.peer, horovod=replace(plan.peer.horovod, cycle_time_ms=HOROVOD_CYCLE_TIME_MS)
    )
    # Each group's series are measured alternately; its efficiencies divide by its first series (1 worker).
    # The overlapped allreduce (one per tensor, during the backward pass) and Horovod's own cycle time are
    # 2-worker alternatives to the defaults: with one worker there is nothing to overlap or coordinate.
    groups = (
        [
            ("scaling", plan.peer, 1, plain_timing),
            ("scaling", plan.peer, 2, plain_timing),
            ("scaling_overlap", overlapped, 2, plain_timing),
            ("scaling_horovod_cycle", horovod_cycle, 2, plain_timing),
        ],
        [
            ("scaling_accumulated", accumulated, workers, accumulated_timing)
            for workers in plan.scaling_workers
        ],
    )
    for series in groups:
        repetitions: dict[tuple[str, int], list[float]] = {
            (prefix, workers): [] for prefix, _, workers, _ in series
        }
        rounds: dict[tuple[str, int], list[float]] = {key: [] for key in repetitions}
        threads = {}
        cycle_times = {}
        for _ in range(plan.scaling_rounds):
            for prefix, config, workers, timing in series:
                result = scaling.run_workers(
                    workers, config, plan.peer_shapes, timing, plan.horovod_timeout_seconds
                )
                repetitions[prefix, workers].extend(result["repetitions"])
                rounds[prefix, workers].append(common.summary_of(result["repetitions"])["median"])
                threads = {name: result[name] for name in ("intra_op_threads", "inter_op_threads")}
                cycle_times[prefix, workers] = result["cycle_time_ms"]
        median = {key: common.summary_of(values)["median"] for key, values in repetitions.items()}
        baseline_prefix, _, baseline_workers, _ = series[0]
        baseline = (baseline_prefix, baseline_workers)
        for prefix, config, workers, _ in series:
            details = {
                **threads,
                "accumulate_steps": config.accumulate_steps,
                "overlap_allreduce": config.horovod.overlap_allreduce,
                "cycle_time_ms": cycle_times[prefix, workers],  # as the worker resolved train.horovod's
            }
            figures[f"{prefix}_{WORKER_WORDS[workers]}_samples_per_second"] = figure(
                median[prefix, workers], "samples/s", repetitions=repetitions[prefix, workers], **details
            )
            if workers == 1:
                continue
            per_round = [
                round(scaling.scaling_efficiency(one, many, workers), 3)
                for one, many in zip(rounds[baseline], rounds[prefix, workers], strict=True)
            ]
            key = f"{prefix}_efficiency" if workers == 2 else f"{prefix}_{WORKER_WORDS[workers]}_efficiency"
            figures[key] = figure(
                scaling.scaling_efficiency(median[baseline], median[prefix, workers], workers),
                "fraction",
                TARGETS.get(key),
                per_round=per_round,
                cores=os.cpu_count(),
            )
    return figures


def _ceiling_models(plan: Plan) -> dict[str, tuple[TrainConfig, Shapes, str]]:
    """The training group's models of ours: config, batch shapes and the key of their samples/s figure."""
    return {
        "classic_shapes": (
            plan.classic_like,
            replace(plan.peer_shapes, vocab_size=plan.classic.vocab_size),
            "train_classic_shapes_samples_per_second",
        ),
        "peer_shapes": (plan.peer, plan.peer_shapes, "train_peer_shapes_samples_per_second"),
        "defaults": (plan.defaults, plan.default_shapes, "train_defaults_samples_per_second"),
    }


def _measured_in_this_run(results: dict[str, Any], group: str) -> bool:
    """Whether ``group``'s figures in the results file come from this invocation of the runner."""
    started = results.get("run", {}).get("started_at")
    measured = results.get("groups", {}).get(group, {}).get("measured_at")
    return bool(started and measured and measured >= started)


def run_ceiling(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """FLOPs per training example (counted, checked against TensorFlow's profiler), the float32 matmul peak,
    our training figures as fractions of it, and the padding share of today's batches on the default corpus.

    The training figures are the training group's when it ran earlier in this run, else measured here. The
    in-process peak is the best of repetitions before and after them, so a busy spell of a shared machine
    does not fall on the peak only.
    """
    results = merged_results(output_path(options.out, plan.quick), keep_previous=True)
    size, repetitions, timeout = plan.peak_matrix_size, plan.peak_repetitions, plan.horovod_timeout_seconds
    before = ceiling.peak_in_process(size, repetitions)
    alone = ceiling.peak_in_processes(1, 1, size, repetitions, timeout)[0]
    pair = ceiling.peak_in_processes(2, 1, size, repetitions, timeout)
    per_rank = sum(rank["gflops"] for rank in pair) / len(pair)
    training = results if _measured_in_this_run(results, "training") else None
    models = {}
    for name, (config, shapes, rate_key) in _ceiling_models(plan).items():
        models[name] = _model_rate(plan, config, shapes, rate_key, training)
    after = ceiling.peak_in_process(size, repetitions)
    peak = {**before, "gflops": max(before["gflops"], after["gflops"])}
    peak["repetitions"] = before["repetitions"] + after["repetitions"]
    figures = {
        "ceiling_peak_gflops": figure(peak["gflops"], "GFLOP/s", **_peak_details(peak)),
        "ceiling_peak_one_thread_gflops": figure(alone["gflops"], "GFLOP/s", **_peak_details(alone)),
        "ceiling_peak_per_rank_two_ranks_gflops": figure(
            per_rank, "GFLOP/s", ranks=[_peak_details(rank) for rank in pair]
        ),
    }
    for name, (config, shapes, _) in _ceiling_models(plan).items():
        figures.update(_model_ceiling(name, config, shapes, models[name], peak["gflops"]))
    if _measured_in_this_run(results, "scaling"):
        figures.update(_scaling_ceiling(plan, results, alone["gflops"], per_rank))
    figures.update(_padding_figures(plan, options))
    return figures


def _peak_details(peak: dict[str, Any]) -> dict[str, Any]:
    return {
        "matrix_size": peak["size"],
        "intra_op_threads": peak["intra_op_threads"],
        "repetitions": peak["repetitions"],
    }


def _real_length_flops(config: TrainConfig, shapes: Shapes) -> float:
    """Mean train FLOPs per example of the training group's synthetic batches at each example's lengths."""
    values = []
    for batch in common.synthetic_batches(shapes, training_speed.DISTINCT_BATCHES, SEED):
        source = (batch["source_ids"] != PAD_ID).sum(axis=1)
        target = (batch["target_out"] != PAD_ID).sum(axis=1)
        counted = flops.train_flops_per_example(config, shapes.vocab_size, source, target, shapes.batch_size)
        values.extend(counted["total"].tolist())
    return sum(values) / len(values)


def _model_rate(
    plan: Plan, config: TrainConfig, shapes: Shapes, rate_key: str, training: dict[str, Any] | None
) -> tuple[float, dict[str, Any]]:
    """Samples/s of our train step: the training group's figure of this run, else measured now."""
    if training is not None and rate_key in training:
        return training[rate_key]["value"], {"throughput_figure": rate_key}
    measured = training_speed.measure_our_training(config, shapes, plan.ceiling_timing, SEED)
    return measured["samples_per_second"], {"measured_here": measured["repetitions"]}


def _model_ceiling(
    name: str,
    config: TrainConfig,
    shapes: Shapes,
    measured: tuple[float, dict[str, Any]],
    peak_gflops: float,
) -> dict[str, Any]:
    config = replace(config, batch_size=shapes.batch_size)
    counted = flops.train_flops_per_example(
        config, shapes.vocab_size, shapes.source_length, shapes.target_length, shapes.batch_size
    )
    real = _real_length_flops(config, shapes)
    check = ceiling.check_count(config, shapes, SEED)
    rate, source = measured
    achieved = rate * counted["total"] / 1e9
    prefix = f"ceiling_{name}"
    lengths = (shapes.source_length, shapes.target_length)
    return {
        f"{prefix}_train_mflops_per_example": figure(
            counted["total"] / 1e6,
            "MFLOP/example",
            padded_lengths=list(lengths),
            batch_size=shapes.batch_size,
            vocab_size=shapes.vocab_size,
            real_lengths_mflops=round(real / 1e6, 3),
            forward_mflops=round(counted["forward"]["total"] / 1e6, 3),
            forward_matmul_mflops=round(counted["forward"]["matmul"] / 1e6, 3),
            backward_multiplier=flops.BACKWARD_MULTIPLIER,
            optimizer_mflops=round(counted["optimizer"] / 1e6, 3),
            forward_by_part_mflops=flops.breakdown(config, shapes.vocab_size, *lengths),
            parameters=flops.parameter_count(config, shapes.vocab_size),
        ),
        f"{prefix}_profiler_over_analytic": figure(
            check["ratio_profiler_over_analytic"]["train_total"], "x analytic", **check
        ),
        f"{prefix}_samples_per_second_at_peak": figure(
            peak_gflops * 1e9 / counted["total"], "samples/s", peak_figure="ceiling_peak_gflops"
        ),
        f"{prefix}_achieved_gflops": figure(achieved, "GFLOP/s", samples_per_second=round(rate, 2), **source),
        f"{prefix}_fraction_of_peak": figure(
            achieved / peak_gflops,
            "of peak",
            peak_figure="ceiling_peak_gflops",
            useful_fraction_of_peak=round(rate * real / 1e9 / peak_gflops, 4),
            **source,
        ),
    }


def _scaling_ceiling(
    plan: Plan, results: dict[str, Any], one_thread_gflops: float, per_rank_gflops: float
) -> dict[str, Any]:
    """The scaling group's figures (peer's shapes, one thread per rank) as fractions of their peaks."""
    shapes = plan.peer_shapes
    per_example = flops.train_flops_per_example(
        plan.peer, shapes.vocab_size, shapes.source_length, shapes.target_length, shapes.batch_size
    )["total"]
    one = results["scaling_one_worker_samples_per_second"]["value"] * per_example / 1e9
    two = results["scaling_two_workers_samples_per_second"]["value"] * per_example / 1e9
    return {
        "ceiling_scaling_one_worker_fraction_of_peak": figure(
            one / one_thread_gflops,
            "of peak",
            throughput_figure="scaling_one_worker_samples_per_second",
            peak_figure="ceiling_peak_one_thread_gflops",
            achieved_gflops=round(one, 3),
        ),
        "ceiling_scaling_two_workers_fraction_of_peak": figure(
            two / (2 * per_rank_gflops),
            "of peak",
            throughput_figure="scaling_two_workers_samples_per_second",
            peak_figure="2 x ceiling_peak_per_rank_two_ranks_gflops",
            achieved_gflops=round(two, 3),
        ),
    }


def _truncated_fraction(tokenized: Path, train_examples: int) -> float | None:
    """The tokenize stage's exact share of cut train sources, if its metrics match these shards."""
    path = tokenized.parent.parent / "metrics" / "tokenize.json"
    if not path.is_file():
        return None
    train = read_json(path).get("train", {})
    if train.get("examples") != train_examples:
        return None
    return train.get("truncated_sources_fraction")


def _padding_figures(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """PAD shares of one epoch of the train stage's batches (defaults: batch size, workers) on --tokenized."""
    with tempfile.TemporaryDirectory(prefix="benchmark-ceiling-") as directory:
        tokenized = options.tokenized
        if tokenized is None and plan.quick:
            tokenized = ceiling.write_synthetic_shards(
                Path(directory) / "tokenized", plan.default_shapes, plan.synthetic_records, 4, SEED
            )
        elif tokenized is None:
            tokenized = REPO_ROOT / "data" / "tokenized"
        try:
            files = records.list_shards(tokenized, "train")
        except FileNotFoundError as error:
            print(f"benchmarks: ceiling: padding skipped: {error} (--tokenized)", file=sys.stderr)
            return {}
        spm = tokenized / "spm.model"
        vocab_size = Tokenizer.load(spm).vocab_size if spm.is_file() else plan.default_shapes.vocab_size
        cap = plan.default_shapes.source_length
        share = ceiling.padding_share(files, plan.defaults, vocab_size, plan.defaults.workers, cap)
    details = {name: round(value, 4) if isinstance(value, float) else value for name, value in share.items()}
    details.update(tokenized=str(tokenized), vocab_size=vocab_size, max_source_tokens=cap)
    figures = {
        "ceiling_corpus_source_padding_fraction": figure(
            share["source_padding_fraction"], "of source slots", **details
        ),
        "ceiling_corpus_target_padding_fraction": figure(share["target_padding_fraction"], "of target slots"),
        "ceiling_corpus_sources_at_cap_fraction": figure(
            share["at_cap_fraction"], f"of train sources ({cap} tokens)"
        ),
    }
    truncated = _truncated_fraction(tokenized, share["train_examples"])
    if truncated is not None:
        figures["ceiling_corpus_sources_truncated_fraction"] = figure(
            truncated, f"of train sources (> {cap} tokens)", source="metrics/tokenize.json"
        )
    figures["ceiling_corpus_useful_flops_fraction"] = figure(
        share["useful_flops_fraction"],
        "of train FLOPs",
        padded_mflops_per_example=round(share["padded_mflops_per_example"], 3),
        real_mflops_per_example=round(share["real_mflops_per_example"], 3),
    )
    return figures


def run_checkpointing(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """2 workers at our default shapes, without and with the train stage's stop/checkpoint control.

    Alternated ``plan.scaling_rounds`` times. The cost at the default interval is the samples/s lost to the
    control collectives plus one checkpoint save (timed on the chief) per ``checkpoint_every_minutes``.
    """
    repetitions: dict[bool, list[float]] = {False: [], True: []}
    saves = []
    for _ in range(plan.scaling_rounds):
        for control in repetitions:
            result = scaling.run_workers(
                2,
                plan.defaults,
                plan.default_shapes,
                plan.scaling_timing,
                plan.horovod_timeout_seconds,
                control,
            )
            repetitions[control].extend(result["repetitions"])
            if result["checkpoint_seconds"] is not None:
                saves.append(result["checkpoint_seconds"])
    off, on = (common.summary_of(repetitions[control])["median"] for control in (False, True))
    save_seconds = common.summary_of(saves)["median"]
    interval = plan.defaults.checkpoint_every_minutes * 60
    cost = 100.0 * ((off - on) / off + (save_seconds / interval if interval else 0.0))
    return {
        "checkpointing_off_samples_per_second": figure(off, "samples/s", repetitions=repetitions[False]),
        "checkpointing_on_samples_per_second": figure(on, "samples/s", repetitions=repetitions[True]),
        "checkpoint_save_seconds": figure(save_seconds, "s", repetitions=saves),
        "checkpointing_cost_percent": figure(
            max(cost, 0.0), "% of samples/s", TARGETS["checkpointing_cost_percent"], "<="
        ),
    }


def run_precision(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """Step time of our default model under float32, mixed_float16 and mixed_bfloat16, in the same run."""
    results = {
        precision: training_speed.measure_our_training(
            replace(plan.defaults, precision=precision), plan.default_shapes, plan.timing, SEED
        )
        for precision in ("float32", "mixed_float16", "mixed_bfloat16")
    }
    float32_milliseconds = results["float32"]["step_milliseconds"]
    figures = {}
    for precision, result in results.items():
        batch_size = plan.default_shapes.batch_size
        figures[f"precision_{precision}_step_milliseconds"] = figure(
            result["step_milliseconds"],
            "ms/step",
            repetitions=[round(1000.0 * batch_size / rate, 1) for rate in result["repetitions"]],
        )
        if precision != "float32":
            figures[f"precision_{precision}_speedup"] = figure(
                float32_milliseconds / result["step_milliseconds"], "x float32"
            )
    return figures


def run_determinism(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """Our default model's train step with op determinism off and on, each in a fresh process, alternately."""
    repetitions: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(plan.determinism_rounds):
        for deterministic in repetitions:
            result = determinism.measure_in_child(
                deterministic,
                plan.defaults,
                plan.default_shapes,
                plan.timing,
                SEED,
                plan.horovod_timeout_seconds,
            )
            if result["op_determinism"] != deterministic:
                raise RuntimeError(f"op determinism is {result['op_determinism']}, expected {deterministic}")
            repetitions[deterministic].extend(result["repetitions"])
    off, on = (common.summary_of(repetitions[setting])["median"] for setting in (False, True))
    return {
        "determinism_off_samples_per_second": figure(off, "samples/s", repetitions=repetitions[False]),
        "determinism_on_samples_per_second": figure(on, "samples/s", repetitions=repetitions[True]),
        "determinism_cost_percent": figure(
            100.0 * (1.0 - on / off), "% slower", TARGETS["determinism_cost_percent"], "<="
        ),
    }


def run_parameters(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """GRU vs LSTM parameter counts of our default model (equal units, embedding and vocabulary)."""
    counts = training_speed.parameter_counts(plan.defaults, plan.default_shapes.vocab_size)
    gru, lstm = counts["gru"], counts["lstm"]
    return {
        "parameters_gru_fewer_recurrent_percent": figure(
            100.0 * (1 - gru["recurrent"] / lstm["recurrent"]),
            "% fewer than LSTM",
            TARGETS["gru_fewer_recurrent_percent"],
            comparison="~",
            tolerance=1.0,
            gru=gru["recurrent"],
            lstm=lstm["recurrent"],
        ),
        "parameters_gru_fewer_total_percent": figure(
            100.0 * (1 - gru["total"] / lstm["total"]),
            "% fewer than LSTM",
            gru=gru["total"],
            lstm=lstm["total"],
        ),
    }


def _tokenize_corpus(plan: Plan, options: argparse.Namespace, work_dir: Path) -> Path:
    if plan.quick:
        return tokenize_speed.write_synthetic_corpus(work_dir / "synthetic", plan.synthetic_records, SEED)
    if options.corpus is not None:
        return options.corpus
    if (REPO_ROOT / "data" / "ingested").is_dir():
        return REPO_ROOT / "data" / "ingested"
    return tokenize_speed.ingest_default_corpus(options.params, work_dir / "ingest")


def run_tokenize(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """The tokenize stage on the corpus, then on copies with each line repeated ``factor`` times."""
    with tempfile.TemporaryDirectory(prefix="benchmark-tokenize-") as directory:
        work_dir = Path(directory)
        corpus = _tokenize_corpus(plan, options, work_dir)
        params_path = tokenize_speed.write_tokenize_params(plan.tokenize, work_dir / "params.yaml")
        measured = {1: _measure_copy(corpus, 1, params_path, work_dir)}
        for factor in plan.replication_factors:
            measured[factor] = _measure_copy(corpus, factor, params_path, work_dir)
    figures = {}
    for factor, result in measured.items():
        prefix = "tokenize" if factor == 1 else f"tokenize_{factor}x"
        figures[f"{prefix}_megabytes_per_second"] = figure(
            result["megabytes_per_second"], "MB/s", **_tokenize_details(result)
        )
        figures[f"{prefix}_peak_rss_megabytes"] = figure(result["peak_rss_megabytes"], "MB")
    factors = list(measured)
    for smaller, larger in zip(factors, factors[1:], strict=False):
        ratio = measured[larger]["peak_rss_megabytes"] / measured[smaller]["peak_rss_megabytes"]
        figures[f"tokenize_peak_rss_ratio_{larger}x_over_{smaller}x"] = figure(
            ratio, f"x (RSS {larger}x / {smaller}x)", TARGETS["tokenize_rss_ratio"], "<="
        )
    return figures


def _measure_copy(corpus: Path, factor: int, params_path: Path, work_dir: Path) -> dict[str, Any]:
    """Tokenize ``corpus`` (factor 1) or a copy with each line repeated ``factor`` times (then deleted)."""
    run_dir = work_dir / f"run-{factor}x"
    run_dir.mkdir()
    source = corpus if factor == 1 else tokenize_speed.replicate_corpus(corpus, run_dir / "ingested", factor)
    try:
        return tokenize_speed.measure_tokenize(source, params_path, run_dir)
    finally:
        shutil.rmtree(run_dir)


def _tokenize_details(result: dict[str, Any]) -> dict[str, Any]:
    names = (
        "input_megabytes",
        "examples",
        "wall_seconds",
        "megabytes_per_cpu_second",
        "encode_megabytes_per_second",
        "tokenizer_seconds",
        "encode_seconds",
    )
    return {name: round(result[name], 3) for name in names}


def run_serving(plan: Plan, options: argparse.Namespace) -> dict[str, Any]:
    """``POST /invocations`` latency, one text and a batch of 64, against ``mlflow models serve``."""
    model_dir = options.model_dir
    if not (model_dir / "model.keras").is_file():
        print(
            f"benchmarks: serving skipped: {model_dir} holds no trained model (--model-dir)", file=sys.stderr
        )
        return {}
    test_split = REPO_ROOT / "data" / "ingested" / "test.jsonl"
    texts = serving.benchmark_texts(test_split, serving.BATCH_SIZE)
    result = serving.measure_serving(model_dir, texts, repetitions=2 if plan.quick else 10)
    details = {"model_dir": str(model_dir), "load_average_1min_before": round(os.getloadavg()[0], 2)}
    return {
        "serving_one_text_milliseconds": figure(
            result["one_text_median_milliseconds"],
            "ms",
            repetitions=result["one_text_milliseconds"],
            **details,
        ),
        "serving_batch64_milliseconds": figure(
            result["batch_median_milliseconds"], "ms", repetitions=result["batch_milliseconds"], **details
        ),
    }


RUNNERS: dict[str, Callable[[Plan, argparse.Namespace], dict[str, Any]]] = {
    "training": run_training,
    "batching": run_batching,
    "decoding": run_decoding,
    "scaling": run_scaling,
    "ceiling": run_ceiling,
    "checkpointing": run_checkpointing,
    "precision": run_precision,
    "determinism": run_determinism,
    "parameters": run_parameters,
    "tokenize": run_tokenize,
    "serving": run_serving,
}


# ----------------------------------------------------------------------------------------------------------
# Output


def _format_number(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3g}"


def _format_target(result: dict[str, Any]) -> str:
    if result.get("target") is None:
        return "—"
    if result["comparison"] == "~":
        return f"≈ {_format_number(result['target'])} ± {_format_number(result['tolerance'])}"
    return f"{result['comparison']} {_format_number(result['target'])}"


def figure_keys(results: dict[str, Any]) -> list[str]:
    """Figure keys in group order (GROUPS), each group's figures in the order it produced them."""
    groups = results.get("groups", {})
    return [key for group in GROUPS if group in groups for key in groups[group]["figures"]]


def fractions_of_peak(results: dict[str, Any]) -> dict[str, float]:
    """Throughput figure key -> its fraction of the measured peak (the ceiling group's figures)."""
    return {
        results[key]["throughput_figure"]: results[key]["value"]
        for key in figure_keys(results)
        if results[key].get("unit") == "of peak" and "throughput_figure" in results[key]
    }


def markdown_table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table: figure, value, unit, target, met, and the fraction of the peak."""
    lines = ["| figure | value | unit | target | met | of peak |", "|---|---:|---|---|---|---:|"]
    of_peak = fractions_of_peak(results)
    for key in figure_keys(results):
        result = results[key]
        met = {True: "yes", False: "**no**", None: ""}[result["met"]]
        value = _format_number(result["value"])
        fraction = f"{100 * of_peak[key]:.1f}%" if key in of_peak else ""
        lines.append(
            f"| {key} | {value} | {result['unit']} | {_format_target(result)} | {met} | {fraction} |"
        )
    return "\n".join(lines)


def machine_line(results: dict[str, Any]) -> str:
    machine, found = results["machine"], results["versions"]
    return (
        f"{machine['cpu_model']}, {machine['cores']} cores ({', '.join(machine['cpu_flags'])}); "
        + ", ".join(f"{name} {version}" for name, version in found.items())
    )


def output_path(out_dir: Path, quick: bool) -> Path:
    return out_dir / ("results-quick.json" if quick else "results.json")


def merged_results(path: Path, keep_previous: bool) -> dict[str, Any]:
    """The figures of an earlier run at ``path`` to update (``--only``), or a fresh mapping."""
    if keep_previous and path.is_file():
        return read_json(path)
    return {"groups": {}}


# ----------------------------------------------------------------------------------------------------------
# Entry point


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Measure training, decoding, scaling, the ceiling (FLOPs per example, matmul peak, "
        "padding), precision, the cost of op determinism, parameter counts and tokenize throughput; print a "
        "Markdown table and write the results JSON.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (seconds, not minutes); for the smoke test"
    )
    parser.add_argument(
        "--only", nargs="+", choices=GROUPS, metavar="GROUP", help=f"run only these: {', '.join(GROUPS)}"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "benchmarks" / "results", help="results directory"
    )
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml", help="params file")
    parser.add_argument(CHILD_FLAG, dest="in_process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--table", action="store_true", help="print the Markdown table of the existing results file and exit"
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="an ingested directory for the tokenize group "
        "(default: data/ingested, else the ingest stage is run into a temporary directory)",
    )
    parser.add_argument(
        "--tokenized",
        type=Path,
        default=None,
        help="tokenized shards for the ceiling group's padding figures (default: data/tokenized; --quick: "
        "synthetic shards); skipped when it holds no train shards",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=REPO_ROOT / "models" / "summarizer",
        help="the trained model directory the serving group serves (skipped if it holds no model)",
    )
    return parser.parse_args(argv)


def print_table(path: Path) -> int:
    if not path.is_file():
        print(f"benchmarks: error: {path}: no results yet; run python -m benchmarks.run", file=sys.stderr)
        return 1
    results = read_json(path)
    print(machine_line(results))
    print(markdown_table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    try:
        params = load_params(options.params)
    except ConfigError as error:
        print(f"benchmarks: error: {error}", file=sys.stderr)
        return 2
    plan = quick_plan(params) if options.quick else full_plan(params)
    groups = options.only or list(GROUPS)
    path = output_path(options.out, plan.quick)
    if options.table:
        return print_table(path)
    if options.in_process:
        return measure_groups(plan, options, groups, path)
    results = merged_results(path, keep_previous=options.only is not None)
    results.update(machine=common.machine_info(), versions=common.versions())
    results["run"] = {
        "command": shlex.join(["python", "-m", "benchmarks.run", *_arguments(argv)]),
        "quick": plan.quick,
        "started_at": _now(),
    }
    print(machine_line(results), flush=True)
    write_json(path, results)
    for group in groups:
        status = measure_group_in_child(group, options)
        if status != 0:
            print(f"benchmarks: error: the {group} group failed (exit status {status})", file=sys.stderr)
            return status
    results = read_json(path)
    print(markdown_table(results))
    print(f"benchmarks: results written to {path}", file=sys.stderr)
    return 0


def _arguments(argv: list[str] | None) -> list[str]:
    return list(argv if argv is not None else sys.argv[1:])


def measure_group_in_child(group: str, options: argparse.Namespace) -> int:
    """Measure one group in a fresh Python process: no group inherits another's TensorFlow state."""
    command = [sys.executable, "-m", "benchmarks.run", CHILD_FLAG, "--only", group, "--out", str(options.out)]
    command += ["--params", str(options.params)] + (["--quick"] if options.quick else [])
    if options.corpus is not None:
        command += ["--corpus", str(options.corpus)]
    if options.tokenized is not None:
        command += ["--tokenized", str(options.tokenized)]
    command += ["--model-dir", str(options.model_dir)]
    return subprocess.run(command, cwd=REPO_ROOT, check=False).returncode


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def measure_groups(plan: Plan, options: argparse.Namespace, groups: list[str], path: Path) -> int:
    """Measure ``groups`` in this process, adding their figures to the results file after each."""
    for group in groups:
        started = time.perf_counter()
        print(f"benchmarks: {group} ...", file=sys.stderr, flush=True)
        figures = RUNNERS[group](plan, options)
        results = merged_results(path, keep_previous=True)
        results.update(figures)
        results["groups"][group] = {
            "figures": list(figures),
            "seconds": round(time.perf_counter() - started, 1),
            "measured_at": _now(),
            "load_average_1min_after": round(os.getloadavg()[0], 2),
        }
        write_json(path, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

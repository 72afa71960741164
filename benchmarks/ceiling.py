"""The ceiling: the FLOP count checked against TensorFlow, the measured matmul peak, and batch padding.

* :func:`profiled_flops` counts a traced graph with TensorFlow's profiler
  (``tf.compat.v1.profiler.profile``, ``float_operation``). The profiler sees only the ops of the graph it
  is given: a Keras GRU/LSTM on CPU runs as a ``While`` op whose body (one timestep) is a separate function
  graph, so the profiler alone misses every recurrent product. Here each ``While`` body is profiled on its
  own and multiplied by the loop's trip count (its ``maximum_iterations`` input, a constant at fixed shapes),
  for the forward loops and for their gradient loops alike.
* :func:`peak_in_process` / :func:`peak_in_processes`: the best GFLOP/s of a large float32 ``tf.matmul``, in
  this process (TensorFlow's default threads, as the training group runs) or in N fresh single-thread
  processes started together (as ``horovodrun -np 2`` runs the ranks on this 2-core machine).
* :func:`padding_share`: the PAD share of the batches the train stage reads (``training.train_dataset`` as
  ``runner`` calls it, one epoch, every rank), and the FLOPs of those batches at padded and real lengths.

Usage (internal): python -m benchmarks.ceiling --peak-worker --size N --repetitions R --threads T
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import tensor_util
from tensorflow.python.util import deprecation

from benchmarks import flops
from benchmarks.common import Shapes, synthetic_batch
from benchmarks.training_speed import dtype_policy, make_trainer
from summarizer import records
from summarizer.config import TrainConfig
from summarizer.distribution import LocalDistribution
from summarizer.losses import token_losses
from summarizer.tokenization import PAD_ID
from summarizer.training import steps_per_epoch, train_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
WHILE_OPS = ("While", "StatelessWhile")
BATCH_MATMUL_OPS = ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
READY, GO = "ready", "go"
SINGLE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}


class CeilingError(RuntimeError):
    """A measurement could not be made; the message says which and why."""


# ----------------------------------------------------------------------------------------------------------
# The count, checked against TensorFlow's profiler


def _profile_by_node(graph: tf.Graph) -> dict[str, int]:
    """Float ops of each of ``graph``'s own nodes, as TensorFlow's profiler counts them (scope view)."""
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    with deprecation.silence():  # the registry's shape helper warns that it is TF1 API, once per process
        profile = tf.compat.v1.profiler.profile(graph=graph, cmd="scope", options=options)
    counted: dict[str, int] = {}

    def walk(node: Any) -> None:
        if node.float_ops:
            counted[node.name] = int(node.float_ops)
        for child in node.children:
            walk(child)

    walk(profile)
    return counted


def _batch_matmul_flops(op: tf.Operation) -> int:
    """2 x inner size x output elements of a BatchMatMul op.

    TensorFlow's flops registry (``profiler/internal/flops_registry.py``) takes the inner size from attribute
    ``transpose_a``, which BatchMatMul ops do not have (theirs is ``adj_x``): with ``adj_x`` it multiplies by
    the wrong dimension. Gradients of ``weights @ memory`` (the attention context) have ``adj_x``.
    """
    left = op.inputs[0].shape
    inner = left[-2] if op.get_attr("adj_x") else left[-1]
    return 2 * int(inner) * int(np.prod(op.outputs[0].shape.as_list()))


def live_operations(graph: tf.Graph) -> set[str]:
    """Names of the ops on a path to the function's outputs or control outputs: the ones that run.

    TensorFlow prunes the rest of a function body before running it; Keras' rnn leaves such an op behind, a
    first cell step outside the loop whose output only gives the TensorArray its shape ("discarded").
    """
    stack = [tensor.op for tensor in graph.outputs] + list(getattr(graph, "control_outputs", []))
    live: set[str] = set()
    while stack:
        op = stack.pop()
        if op.name not in live:
            live.add(op.name)
            stack.extend(tensor.op for tensor in op.inputs)
            stack.extend(op.control_inputs)
    return live


def _static_value(tensor: tf.Tensor) -> Any:
    """``tensor``'s value if the graph fixes it: constants, or ``reduce_max`` over all axes of a constant."""
    value = tensor_util.constant_value(tensor)
    if value is None and tensor.op.type == "Max":  # Keras' rnn: maximum_iterations = tf.reduce_max(length)
        operand = tensor_util.constant_value(tensor.op.inputs[0])
        axes = tensor_util.constant_value(tensor.op.inputs[1])
        all_axes = (
            operand is not None and axes is not None and sorted(np.ravel(axes)) == [*range(operand.ndim)]
        )
        value = np.max(operand) if all_axes else None
    return value


def _trip_count(op: tf.Operation) -> int:
    """Iterations of a while_v2 loop: its ``maximum_iterations`` input (``inputs[1]``), fixed by the shapes.

    Keras' rnn loops also stop at the sequence length, which equals it here; a gradient loop of while_v2 takes
    the forward loop's ``maximum_iterations`` tensor as its own.
    """
    value = _static_value(op.inputs[1])
    if value is None or int(value) < 0:
        raise CeilingError(f"{op.name}: the trip count of this {op.type} is not a constant")
    return int(value)


def _body_graph(op: tf.Operation) -> tf.Graph:
    body = getattr(op, "_body_graph", None)
    if body is None:
        raise CeilingError(f"{op.name}: no body graph kept for this {op.type} (not a while_v2 loop)")
    return body


def profiled_flops(graph: tf.Graph) -> dict[str, Any]:
    """Float ops of the ops of ``graph`` that run, by op type, with every ``While`` body x its trip count.

    Returns ``by_type`` (op type -> FLOPs), ``total``, ``matmul`` (the MatMul/BatchMatMul types),
    ``top_level`` (what the profiler reports for ``graph`` alone: no loop bodies, pruned ops included),
    ``pruned`` (FLOPs of ops that never run, loop bodies included), ``adjoint_correction`` (see
    :func:`_batch_matmul_flops`; included in the others) and ``loops`` (name, trips, body FLOPs).
    """
    counted, live = _profile_by_node(graph), live_operations(graph)
    by_type: Counter[str] = Counter()
    pruned = corrected = 0
    for name, count in counted.items():
        if name not in live:
            pruned += count
            continue
        op = graph.get_operation_by_name(name)
        if op.type in BATCH_MATMUL_OPS:
            right = _batch_matmul_flops(op)
            corrected, count = corrected + right - count, right
        by_type[op.type] += count
    loops = []
    for op in graph.get_operations():
        if op.type in ("If", "StatelessIf", "Case", "StatelessCase"):
            raise CeilingError(f"{op.name}: {op.type} bodies are not counted; extend profiled_flops")
        if op.type not in WHILE_OPS or op.name not in live:
            continue
        trips = _trip_count(op)
        body = profiled_flops(_body_graph(op))
        loops.append({"name": op.name, "trips": trips, "body_flops": body["total"]})
        pruned += trips * body["pruned"]
        corrected += trips * body["adjoint_correction"]
        for op_type, count in body["by_type"].items():
            by_type[op_type] += trips * count
    return {
        "by_type": dict(by_type),
        "total": sum(by_type.values()),
        "matmul": sum(by_type[name] for name in flops.MATMUL_OP_TYPES),
        "top_level": sum(counted.values()),
        "pruned": pruned,
        "adjoint_correction": corrected,
        "loops": loops,
    }


def _fixed_specs(shapes: Shapes) -> dict[str, tf.TensorSpec]:
    source = tf.TensorSpec([shapes.batch_size, shapes.source_length], tf.int32)
    target = tf.TensorSpec([shapes.batch_size, shapes.target_length], tf.int32)
    return {"source_ids": source, "target_in": target, "target_out": target}


def traced_graphs(config: TrainConfig, shapes: Shapes, seed: int) -> dict[str, tf.Graph]:
    """The forward pass + loss and the whole train step (``Trainer._step``) traced at fixed shapes."""
    config = replace(config, batch_size=shapes.batch_size)
    with dtype_policy(config.precision):
        trainer = make_trainer(config, shapes.vocab_size, seed)

        def forward(batch: dict[str, tf.Tensor]) -> tf.Tensor:
            outputs = trainer.model.score(batch, training=True)
            return token_losses(outputs, batch["target_out"], config.label_smoothing)[0]

        specs = _fixed_specs(shapes)
        return {
            "forward": tf.function(forward).get_concrete_function(specs).graph,
            # the product's step function, traced again with static shapes (its own signature has None)
            "train_step": tf.function(trainer._step).get_concrete_function(specs).graph,
        }


def _significant(value: float) -> float:
    return float(f"{value:.6g}")


def check_count(config: TrainConfig, shapes: Shapes, seed: int) -> dict[str, Any]:
    """The analytic count and TensorFlow's profiler on the same model and shapes, per example.

    Returns MFLOPs per example: analytic and profiled, forward and train step, all ops and matrix products
    only, with the ratios profiled / analytic; and the measured train / forward ratio of the profiler.
    """
    counted = flops.train_flops_per_example(
        config, shapes.vocab_size, shapes.source_length, shapes.target_length, shapes.batch_size
    )
    graphs = traced_graphs(config, shapes, seed)
    profiled = {name: profiled_flops(graph) for name, graph in graphs.items()}
    per_example = 1e6 * shapes.batch_size
    analytic = {
        "forward_matmul": counted["forward"]["matmul"] / 1e6,
        "forward_total": counted["forward"]["total"] / 1e6,
        "train_matmul": counted["matmul"] / 1e6,
        "train_total": counted["total"] / 1e6,
    }
    measured = {
        "forward_matmul": profiled["forward"]["matmul"] / per_example,
        "forward_total": profiled["forward"]["total"] / per_example,
        "train_matmul": profiled["train_step"]["matmul"] / per_example,
        "train_total": profiled["train_step"]["total"] / per_example,
    }
    forward_top = profiled["forward"]["top_level"] / per_example
    pruned = profiled["train_step"]["pruned"] / per_example
    return {
        "analytic_mflops": {key: _significant(value) for key, value in analytic.items()},
        "profiler_mflops": {key: _significant(value) for key, value in measured.items()},
        "ratio_profiler_over_analytic": {key: round(measured[key] / analytic[key], 4) for key in analytic},
        "profiler_train_over_forward": round(measured["train_total"] / measured["forward_total"], 4),
        "profiler_train_over_forward_matmul": round(measured["train_matmul"] / measured["forward_matmul"], 4),
        "profiler_forward_without_loops_mflops": _significant(forward_top),
        "profiler_train_pruned_mflops": _significant(pruned),
        "profiler_train_adjoint_correction_mflops": _significant(
            profiled["train_step"]["adjoint_correction"] / per_example
        ),
        "loops": {name: len(profile["loops"]) for name, profile in profiled.items()},
        "profiler_train_by_op_type_mflops": {
            name: _significant(value / per_example)
            for name, value in sorted(profiled["train_step"]["by_type"].items(), key=lambda item: -item[1])
            if value
        },
    }


# ----------------------------------------------------------------------------------------------------------
# The peak: a large float32 matmul


def matmul_gflops(size: int, repetitions: int, seed: int = 0) -> list[float]:
    """GFLOP/s of each of ``repetitions`` (size x size) @ (size x size) float32 products, after a warm-up."""
    generator = tf.random.Generator.from_seed(seed)
    left = generator.uniform((size, size), dtype=tf.float32)
    right = generator.uniform((size, size), dtype=tf.float32)
    tf.matmul(left, right)[0, 0].numpy()  # warm-up: kernel selection, buffers
    rates = []
    for _ in range(repetitions):
        started = time.perf_counter()
        tf.matmul(left, right)[0, 0].numpy()
        rates.append(2.0 * size**3 / (time.perf_counter() - started) / 1e9)
    return rates


def peak_in_process(size: int, repetitions: int) -> dict[str, Any]:
    """The best matmul GFLOP/s in this process, with its thread settings (TensorFlow's default: all cores)."""
    rates = matmul_gflops(size, repetitions)
    return {
        "gflops": max(rates),
        "repetitions": [round(rate, 2) for rate in rates],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
        "size": size,
    }


def peak_in_processes(
    processes: int, threads: int, size: int, repetitions: int, timeout: float
) -> list[dict[str, Any]]:
    """Best matmul GFLOP/s of each of ``processes`` fresh processes (``threads`` threads each) run at once.

    Every process sets its threads before TensorFlow starts, warms up, says it is ready and waits; all start
    timing together, so each sees the others competing for the cores as Horovod ranks do.
    """
    command = [sys.executable, "-m", "benchmarks.ceiling", "--peak-worker", "--size", str(size)]
    command += ["--repetitions", str(repetitions), "--threads", str(threads)]
    environment = {
        **os.environ,
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if threads == 1:
        environment.update(SINGLE_THREAD)
    workers = [
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            line = worker.stdout.readline().strip()
            if line != READY:
                raise CeilingError(f"peak worker did not start: {line!r} {worker.stderr.read()[-2000:]}")
        for worker in workers:
            worker.stdin.write(GO + "\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            output, errors = worker.communicate(timeout=timeout)
            if worker.returncode != 0:
                raise CeilingError(f"peak worker exited {worker.returncode}: {errors[-2000:]}")
            results.append(json.loads(output.strip().splitlines()[-1]))
        return results
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _peak_worker(size: int, repetitions: int, threads: int) -> int:
    tf.config.threading.set_intra_op_parallelism_threads(threads)  # before any op, as horovod_worker does
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.matmul(tf.ones((8, 8)), tf.ones((8, 8))).numpy()  # start the runtime before saying ready
    print(READY, flush=True)
    if sys.stdin.readline().strip() != GO:
        return 1
    print(json.dumps(peak_in_process(size, repetitions)), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------------------
# Padding of today's batches


def _rank(rank: int, workers: int) -> LocalDistribution:
    """A stand-in for rank ``rank`` of ``workers``: what ``train_dataset`` and ``steps_per_epoch`` read."""
    distribution = LocalDistribution()
    distribution.rank, distribution.size = rank, workers
    return distribution


def padding_share(
    files: list[str],
    config: TrainConfig,
    vocab_size: int,
    workers: int,
    max_source_tokens: int,
    epoch: int = 1,
) -> dict[str, Any]:
    """PAD slots of one epoch of the train stage's batches on every rank, and their FLOPs.

    Batches are ``training.train_dataset(files, config, epoch, steps, rank)`` with ``steps`` the train stage's
    (every rank's smallest shard // batch size), so the remainder each rank drops is left out as in training.
    ``at_cap_fraction`` is the share of all train sources ``max_source_tokens`` long (cut ones and those of
    exactly that length).
    """
    ranks = [_rank(rank, workers) for rank in range(workers)]
    steps = min(steps_per_epoch(files, config, rank) for rank in ranks)
    slots = Counter()
    source_lengths, target_lengths, padded_flops, real_flops = [], [], 0.0, 0.0
    for rank in ranks:
        for batch in train_dataset(files, config, epoch, steps, rank):
            source, target = batch["source_ids"].numpy(), batch["target_out"].numpy()
            real_source = np.count_nonzero(source != PAD_ID, axis=1)
            real_target = np.count_nonzero(target != PAD_ID, axis=1)
            slots.update(
                source_slots=source.size,
                source_pad=source.size - int(real_source.sum()),
                target_slots=target.size,
                target_pad=target.size - int(real_target.sum()),
                batches=1,
                examples=source.shape[0],
                padded_source=source.shape[0] * source.shape[1],
                padded_target=target.shape[0] * target.shape[1],
            )
            source_lengths.append(real_source)
            target_lengths.append(real_target)
            padded = flops.train_flops_per_example(
                config, vocab_size, source.shape[1], target.shape[1], config.batch_size
            )
            real = flops.train_flops_per_example(
                config, vocab_size, real_source, real_target, config.batch_size
            )
            padded_flops += padded["total"] * source.shape[0]
            real_flops += float(np.sum(real["total"]))
    all_sources = records.read_dataset(files, 512, shuffle=False)
    at_cap = total = 0
    for batch in all_sources:
        lengths = np.count_nonzero(batch["source_ids"].numpy() != PAD_ID, axis=1)
        at_cap += int(np.count_nonzero(lengths >= max_source_tokens))
        total += lengths.size
    examples = max(slots["examples"], 1)
    return {
        "workers": workers,
        "batch_size": config.batch_size,
        "steps_per_rank": steps,
        "batches": slots["batches"],
        "examples": slots["examples"],
        "train_examples": total,
        "source_padding_fraction": slots["source_pad"] / max(slots["source_slots"], 1),
        "target_padding_fraction": slots["target_pad"] / max(slots["target_slots"], 1),
        "mean_padded_source_length": slots["padded_source"] / examples,
        "mean_source_length": float(np.mean(np.concatenate(source_lengths))) if source_lengths else 0.0,
        "mean_padded_target_length": slots["padded_target"] / examples,
        "mean_target_length": float(np.mean(np.concatenate(target_lengths))) if target_lengths else 0.0,
        "at_cap_fraction": at_cap / max(total, 1),
        "padded_mflops_per_example": padded_flops / examples / 1e6,
        "real_mflops_per_example": real_flops / examples / 1e6,
        "useful_flops_fraction": real_flops / padded_flops if padded_flops else 0.0,
    }


def write_synthetic_shards(directory: Path, shapes: Shapes, examples: int, shards: int, seed: int) -> Path:
    """Train shards of random ids with the synthetic batches' length spread (for --quick)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    one = replace(shapes, batch_size=1)
    with records.ShardedWriter(directory, "train", shards) as writer:
        for _ in range(examples):
            batch = synthetic_batch(one, rng)
            source = [int(token) for token in batch["source_ids"][0] if token != PAD_ID]
            target = [int(token) for token in batch["target_out"][0] if token != PAD_ID]
            writer.write(records.make_example(source, target))
    return directory


# ----------------------------------------------------------------------------------------------------------
# Entry point of the peak workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__)
    parser.add_argument("--peak-worker", action="store_true", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--repetitions", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    arguments = parser.parse_args(argv)
    return _peak_worker(arguments.size, arguments.repetitions, arguments.threads)


__all__ = [
    "CeilingError",
    "check_count",
    "matmul_gflops",
    "padding_share",
    "peak_in_process",
    "peak_in_processes",
    "profiled_flops",
    "traced_graphs",
    "write_synthetic_shards",
]


if __name__ == "__main__":
    sys.exit(main())

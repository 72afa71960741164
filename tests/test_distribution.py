"""Collectives under the real ``horovodrun -np 2`` and the one-process fallback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from summarizer import distribution
from summarizer.config import CPU_CYCLE_TIME_MS, HorovodConfig
from tests.workers.launch import check, horovodrun

WORKER = Path(__file__).parent / "workers" / "distribution_worker.py"
CYCLE_WORKER = Path(__file__).parent / "workers" / "cycle_worker.py"


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("distribution")
    check(horovodrun([str(WORKER), str(out_dir)]))
    results = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    results[0]["timeline"] = out_dir / "timeline.json"
    return results


@pytest.mark.slow
def test_horovod_ranks_and_shards(two_rank_results: list[dict]) -> None:
    assert [
        (r["rank"], r["size"], r["is_chief"], r["shard_index"], r["num_shards"]) for r in two_rank_results
    ] == [(0, 2, True, 0, 2), (1, 2, False, 1, 2)]


@pytest.mark.slow
def test_the_cores_are_shared_out_between_the_local_ranks(two_rank_results: list[dict]) -> None:
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert {(r["intra_op_threads"], r["inter_op_threads"]) for r in two_rank_results} == {(threads, threads)}


@pytest.mark.slow
def test_average_gradients_is_the_mean_of_rank_dependent_tensors(two_rank_results: list[dict]) -> None:
    for result in two_rank_results:
        dense, sparse = result["averaged"]
        assert np.allclose(dense, np.full((2, 3), 1.5))  # mean of 1 and 2
        assert np.allclose(sparse, [[0.0], [0.5]])  # rank 1's row 1 = 1.0, rank 0's row 0 = 0.0, averaged
        assert np.allclose(result["averaged_fp16"], 1.0)  # mean of 0.5 and 1.5 through fp16 compression
        assert result["graph_sum"] == [3.0, 10.0]  # inside tf.function: [1 + 2, 0 + 10]


@pytest.mark.slow
def test_average_of_scalars_and_dicts_and_minimum_and_object(two_rank_results: list[dict]) -> None:
    for result in two_rank_results:
        assert result["average_scalar"] == 2.0
        assert result["average_dict"] == {"loss": 1.5, "tokens": 15.0}
        assert result["minimum"] == 4
        assert result["object"] == {"from_rank": 0}


@pytest.mark.slow
def test_broadcast_makes_keras_variables_equal_to_the_chiefs(two_rank_results: list[dict]) -> None:
    chief, other = two_rank_results
    assert not np.allclose(chief["weights_before"][0], other["weights_before"][0])
    assert np.array_equal(other["weights_after"][0], chief["weights_before"][0])
    assert np.array_equal(chief["weights_after"][0], chief["weights_before"][0])


@pytest.mark.slow
def test_dynamic_timeline_is_written_by_the_chief(two_rank_results: list[dict]) -> None:
    timeline = two_rank_results[0]["timeline"].read_text()
    assert "ALLREDUCE" in timeline and "BROADCAST" in timeline


def timeline_events(timeline: Path) -> list[dict]:
    """The events of a Horovod timeline (a Chrome trace; Horovod leaves the closing bracket out)."""
    text = timeline.read_text(encoding="utf-8").rstrip().rstrip(",")
    return json.loads(text if text.endswith("]") else text + "]")


def collective_names(timeline: Path) -> set[str]:
    """The tensor names of the collectives a timeline recorded (one trace "process" each)."""
    events = timeline_events(timeline)
    return {event["args"]["name"] for event in events if event.get("name") == "process_name" and event["pid"]}


@pytest.mark.slow
def test_one_rank_skips_the_per_step_collectives(tmp_path: Path, two_rank_results: list[dict]) -> None:
    # The gradient average and the token sum run every step; with one rank they would only wait for Horovod's
    # next cycle (train.workers: 1 still launches horovodrun). The rarer collectives still go through Horovod.
    check(horovodrun([str(WORKER), str(tmp_path)], workers=1))
    result = json.loads((tmp_path / "rank0.json").read_text())
    assert result["size"] == 1 and result["averaged"] == [np.full((2, 3), 1.0).tolist(), [[0.0], [0.0]]]
    assert result["averaged_fp16"] == [0.5] * 4 and result["graph_sum"] == [1.0, 0.0]
    per_step = {"sum", "HorovodGroupedAllreduce_1of2", "HorovodGroupedAllreduce_1of1"}
    assert per_step <= collective_names(two_rank_results[0]["timeline"])  # what two ranks record
    one_rank = collective_names(tmp_path / "timeline.json")
    assert not per_step & one_rank and "HorovodAllreduce" in one_rank, one_rank


def cycle_gaps_ms(timeline: Path) -> list[float]:
    """Milliseconds between consecutive ``CYCLE_START`` marks of a Horovod timeline."""
    events = timeline_events(timeline)
    starts = sorted(event["ts"] for event in events if event.get("name") == "CYCLE_START")
    return [(later - earlier) / 1000 for earlier, later in zip(starts, starts[1:], strict=False)]


@pytest.mark.slow
@pytest.mark.parametrize(("setting", "expected_ms"), [("auto", CPU_CYCLE_TIME_MS), ("5", 5.0)])
def test_horovod_cycles_at_the_params_cycle_time_whatever_the_launcher_set(
    tmp_path: Path, setting: str, expected_ms: float
) -> None:
    # The launcher asks for 1 ms (as `horovodrun --cycle-time-ms 1` or an MPIJob's `-x` would); params win.
    check(horovodrun([str(CYCLE_WORKER), str(tmp_path), setting], environment={"HOROVOD_CYCLE_TIME": "1"}))
    assert json.loads((tmp_path / "cycle.json").read_text()) == {"cycle_time_ms": expected_ms}
    gaps = cycle_gaps_ms(tmp_path / "timeline.json")
    assert len(gaps) >= 1000 / expected_ms / 2, f"{len(gaps)} cycles in a second"
    assert expected_ms * 0.9 <= float(np.median(gaps)) <= expected_ms * 1.5, gaps


def test_horovod_environment_is_train_horovod_as_horovodrun_would_set_it() -> None:
    config = HorovodConfig(fusion_threshold_mb=32, cycle_time_ms="auto")
    assert distribution.horovod_environment(config, gpus=False) == {
        "HOROVOD_FUSION_THRESHOLD": str(32 * 1024 * 1024),
        "HOROVOD_CYCLE_TIME": f"{CPU_CYCLE_TIME_MS:g}",
    }
    assert distribution.horovod_environment(config, gpus=True)["HOROVOD_CYCLE_TIME"] == "1"
    chosen = HorovodConfig(cycle_time_ms=2.5)
    assert distribution.horovod_environment(chosen, gpus=True)["HOROVOD_CYCLE_TIME"] == "2.5"


def test_launched_by_horovodrun_reads_the_launcher_environment() -> None:
    assert distribution.launched_by_horovodrun({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2"})
    assert distribution.launched_by_horovodrun({"OMPI_COMM_WORLD_RANK": "0"})
    assert not distribution.launched_by_horovodrun({"PATH": "/usr/bin"})


def test_local_distribution_is_the_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in distribution.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    local = distribution.init()
    assert isinstance(local, distribution.LocalDistribution)
    assert (
        local.rank,
        local.size,
        local.local_rank,
        local.is_chief,
        local.shard_index,
        local.num_shards,
    ) == (0, 1, 0, True, 0, 1)
    sparse = tf.IndexedSlices(tf.constant([[2.0]]), tf.constant([1]), dense_shape=tf.constant([3, 1]))
    dense, densified = local.average_gradients([tf.constant([1.0, -2.0]), sparse], compression_fp16=True)
    assert dense.numpy().tolist() == [1.0, -2.0]
    assert densified.numpy().tolist() == [[0.0], [2.0], [0.0]]
    assert local.sum(tf.constant(5)).numpy() == 5
    assert local.average({"loss": 2.5, "tokens": 3}) == {"loss": 2.5, "tokens": 3.0}
    assert local.average(7) == 7.0
    assert local.minimum(9) == 9
    assert local.broadcast_object({"epoch": 3}) == {"epoch": 3}
    layer = keras.layers.Dense(2)
    layer.build((None, 2))
    before = layer.kernel.numpy().copy()
    local.broadcast_variables(layer.weights)
    local.barrier()
    assert np.array_equal(layer.kernel.numpy(), before)


def fake_gpus(count: int) -> list[tf.config.PhysicalDevice]:
    """The device list TensorFlow returns on a host with ``count`` GPUs."""
    return [tf.config.PhysicalDevice(f"/physical_device:GPU:{index}", "GPU") for index in range(count)]


def test_each_local_rank_gets_its_own_gpu() -> None:
    gpus = fake_gpus(4)
    chosen = [distribution.gpu_for_local_rank(gpus, local_rank, 4) for local_rank in range(4)]
    assert [gpu.name for gpu in chosen] == [f"/physical_device:GPU:{index}" for index in range(4)]
    # Fewer ranks than GPUs (train.workers 2 on a 4-GPU host): the first ones, one each.
    assert distribution.gpu_for_local_rank(gpus, 1, 2).name == "/physical_device:GPU:1"


def test_a_process_that_sees_one_gpu_takes_it_and_a_cpu_host_gets_none() -> None:
    # E.g. a launcher that sets CUDA_VISIBLE_DEVICES per rank: local rank 3 sees one device, its own.
    assert distribution.gpu_for_local_rank(fake_gpus(1), 3, 4).name == "/physical_device:GPU:0"
    assert distribution.gpu_for_local_rank([], 1, 2) is None


def test_more_local_ranks_than_gpus_is_refused_naming_both_counts() -> None:
    with pytest.raises(ValueError, match="4 processes on this host but 2 GPUs visible"):
        distribution.gpu_for_local_rank(fake_gpus(2), 0, 4)


def test_peer_failures_are_told_apart_from_other_errors() -> None:
    horovod = distribution.HorovodDistribution.__new__(distribution.HorovodDistribution)  # no hvd.init()
    shut_down = RuntimeError(
        "... Horovod has been shut down. This was caused by an exception on one of the ranks"
    )
    reset = RuntimeError("Gloo ... Read error [10.213.7.2]:6053: Connection reset by peer")
    assert horovod.is_peer_failure(shut_down) and horovod.is_peer_failure(reset)
    assert not horovod.is_peer_failure(ValueError("train split is empty"))
    assert not distribution.LocalDistribution().is_peer_failure(shut_down)

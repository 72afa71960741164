"""Dynamic loss scaling (mixed_float16) under the real ``horovodrun -np 2``: an overflow on one rank only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.workers import loss_scale_worker as worker
from tests.workers.launch import check, horovodrun

WORKER = Path(worker.__file__)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("loss-scaling")
    check(horovodrun([str(WORKER), str(out_dir)]))
    results = [json.loads((out_dir / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in (0, 1)]
    for result in results:
        with np.load(out_dir / f"rank{result['rank']}.npz") as arrays:
            result["weights"] = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
    return results


@pytest.mark.slow
def test_both_ranks_skip_the_step_that_overflowed_on_one_rank(ranks: list[dict]) -> None:
    expected = [step != worker.OVERFLOW_STEP for step in range(worker.STEPS)]
    for result in ranks:
        assert result["policy"] == "mixed_float16"
        # Rank 0's own gradients were finite at OVERFLOW_STEP: it skipped because the average was not.
        assert [step["weights_changed"] for step in result["steps"]] == expected, result["rank"]
        # The inner optimizer's step count does not advance on the skipped step (AdamW's moments unchanged).
        iterations = [step["iterations"] for step in result["steps"]]
        assert iterations == [1, 2, 2, 3, 4], result["rank"]


@pytest.mark.slow
def test_loss_scales_halve_together_and_stay_equal(ranks: list[dict]) -> None:
    scales = [[step["loss_scale"] for step in result["steps"]] for result in ranks]
    assert scales[0] == scales[1]
    initial = worker.INITIAL_LOSS_SCALE
    assert scales[0] == [initial] * worker.OVERFLOW_STEP + [initial / 2] * (
        worker.STEPS - worker.OVERFLOW_STEP
    )


@pytest.mark.slow
def test_ranks_end_with_identical_finite_weights(ranks: list[dict]) -> None:
    chief, other = ranks[0]["weights"], ranks[1]["weights"]
    assert len(chief) == len(other) > 0
    for chief_array, other_array in zip(chief, other, strict=True):
        assert np.array_equal(chief_array, other_array)
        assert np.all(np.isfinite(chief_array))

"""Run under ``horovodrun -np 2``: record one second of Horovod's coordination cycles in a timeline.

``distribution.init`` gets ``train.horovod.cycle_time_ms`` = CYCLE_TIME_MS (a number, or auto); the chief
writes ``timeline.json`` (``CYCLE_START`` marks) and ``cycle.json`` (what the cycle time came to) in OUT_DIR.

Usage: python cycle_worker.py OUT_DIR CYCLE_TIME_MS
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from summarizer import distribution
from summarizer.config import HorovodConfig


def main(out_dir: Path, cycle_time: str) -> None:
    config = HorovodConfig(cycle_time_ms=cycle_time if cycle_time == "auto" else float(cycle_time))
    dist = distribution.init(dynamic_timeline=True, horovod=config)
    dist.barrier()
    dist.start_timeline(out_dir / "timeline.json", mark_cycles=True)
    time.sleep(1.0)  # nothing to reduce: the background thread only cycles
    dist.stop_timeline()
    dist.barrier()
    if dist.is_chief:
        (out_dir / "cycle.json").write_text(
            json.dumps({"cycle_time_ms": dist.cycle_time_ms}), encoding="utf-8"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])

"""Stopping a long run cleanly: a signal becomes a request that every rank honours at the same step.

Kubernetes sends SIGTERM and waits 30 s before SIGKILL; ``horovodrun`` forwards SIGTERM (or Ctrl-C) to every
rank and kills them 5 s later; a scheduler may signal a single rank. Inside :class:`StopRequest` the first
SIGTERM or SIGINT only sets a flag. :class:`StepControl` runs a tiny collective every ~second of training
(:meth:`~summarizer.distribution.Distribution.maximum` of three numbers: any rank's stop flag, the chief's
"checkpoint due" and the chief's proposal for the next interval in steps), so all ranks stop, and checkpoint,
after the same step. A second signal before that raises :class:`~summarizer.tracking.RunTerminated` at once.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType, TracebackType

from summarizer.distribution import Distribution
from summarizer.tracking import RunTerminated

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CONTROL_SECONDS = 1.0  # training time between two control collectives (a ~1 ms allreduce)
MAX_CONTROL_STEPS = 1000


class StopRequest:
    """While active (main thread only), SIGTERM/SIGINT set :attr:`signal_number` instead of killing.

    A second signal raises :class:`RunTerminated` (exit status 128 + signal), unless :attr:`draining` is
    set: the run is already stopping and must not be interrupted while it writes its checkpoint.
    """

    def __init__(self, program: str = "train") -> None:
        self.program = program
        self.signal_number: int | None = None
        self.draining = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_number is None or self.draining:
            if self.signal_number is None:
                name = signal.Signals(signum).name
                print(
                    f"{self.program}: {name} received: stopping after the current step "
                    "(checkpoint, then exit; a second signal stops at once)",
                    file=sys.stderr,
                    flush=True,
                )
            self.signal_number = self.signal_number or signum
            return
        raise RunTerminated(128 + signum)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def exit_status(self) -> int:
        return 128 + (self.signal_number or signal.SIGTERM)


@dataclass(frozen=True)
class Decision:
    """What every rank does after this step."""

    stop: bool = False
    checkpoint: bool = False


class StepControl:
    """Decides, at the same step on every rank, whether to stop and whether to checkpoint.

    Call :meth:`after_step` after every training step on every rank. Every ``interval`` steps it runs one
    collective; the chief sizes the interval so collectives come about :data:`CONTROL_SECONDS` apart
    (``every_steps`` fixes it instead, for tests).
    """

    def __init__(
        self,
        distribution: Distribution,
        stop: StopRequest,
        checkpoint_every_minutes: float,
        every_steps: int | None = None,
    ) -> None:
        self.distribution = distribution
        self.stop = stop
        self.checkpoint_seconds = checkpoint_every_minutes * 60.0
        self.every_steps = every_steps
        self.interval = every_steps or 1
        self.steps_since_control = 0
        self.last_control = self.last_checkpoint = time.perf_counter()

    def restart_clock(self) -> None:
        """Measure step time afresh (after validation, which is not a training step)."""
        self.steps_since_control, self.last_control = 0, time.perf_counter()

    def checkpointed(self) -> None:
        self.last_checkpoint = time.perf_counter()

    def after_step(self) -> Decision:
        self.steps_since_control += 1
        if self.steps_since_control < self.interval:
            return Decision()
        return self.check()

    def _proposed_interval(self, now: float) -> float:
        if self.every_steps:
            return float(self.every_steps)
        step_seconds = (now - self.last_control) / max(self.steps_since_control, 1)
        return float(min(MAX_CONTROL_STEPS, max(1, round(CONTROL_SECONDS / max(step_seconds, 1e-6)))))

    def check(self) -> Decision:
        """The collective: every rank must call it at the same step."""
        now = time.perf_counter()
        checkpoint_due = proposal = 0.0
        if self.distribution.is_chief:
            checkpoint_due = float(0 < self.checkpoint_seconds <= now - self.last_checkpoint)
            proposal = self._proposed_interval(now)
        stop, checkpoint, interval = self.distribution.maximum(
            [float(self.stop.requested), checkpoint_due, proposal]
        )
        self.interval = max(1, int(interval))
        self.steps_since_control, self.last_control = 0, now
        return Decision(stop=bool(stop), checkpoint=bool(checkpoint))


__all__ = ["CONTROL_SECONDS", "Decision", "StepControl", "StopRequest"]

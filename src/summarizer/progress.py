"""What a person sees while training runs: a line per epoch, and progress within an epoch on the chief."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from summarizer.config import TrainConfig

if TYPE_CHECKING:  # the console scripts format durations without importing TensorFlow
    from summarizer.training import TrainingState


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (seconds rounded down); empty for None."""
    if seconds is None:
        return ""
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:{seconds:02d}"


def epoch_line(row: dict[str, float], config: TrainConfig, state: TrainingState) -> str:
    eta = (config.epochs - state.epoch) * row["seconds"]
    if config.max_wall_minutes > 0:  # the opt-in cap
        eta = min(eta, config.max_wall_minutes * 60 - state.elapsed_seconds)
    eta = max(0.0, eta)
    return (
        f"epoch {int(row['epoch'])}/{config.epochs} loss {row['train_loss']:.4f} "
        f"val_loss {row['val_loss']:.4f} val_perplexity {row['val_perplexity']:.2f} "
        f"lr {row['learning_rate']:.2e} {row['samples_per_second']:.1f} samples/s "
        f"elapsed {format_duration(state.elapsed_seconds)} eta {format_duration(eta)}"
    )


class EpochProgress:
    """Progress within an epoch on the chief: a bar on a terminal, else a line every ``interval`` seconds.

    Under horovodrun the output is piped (never a terminal), so periodic lines are what users see there.
    """

    def __init__(self, epoch: int, steps: int, first_step: int = 0, interval: float = 60.0) -> None:
        self.epoch, self.steps, self.first_step, self.interval = epoch, steps, first_step, interval
        self.is_terminal = sys.stderr.isatty()
        self.started = self.last_report = time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if self.is_terminal and step % max(1, self.steps // 50) == 0:
            print(f"\r  epoch {self.epoch} step {step}/{self.steps} loss {loss:.4f}", end="", file=sys.stderr)
        elif not self.is_terminal and now - self.last_report >= self.interval:
            self.last_report = now
            eta = (now - self.started) / max(step - self.first_step, 1) * (self.steps - step)
            print(
                f"  epoch {self.epoch} step {step}/{self.steps} loss {loss:.4f} "
                f"epoch eta {format_duration(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def checkpointed(self, step: int) -> None:
        """One line per checkpoint inside an epoch (every ``train.checkpoint_every_minutes``)."""
        line_break = "\n" if self.is_terminal else ""  # below the progress bar, not over it
        print(
            f"{line_break}  checkpoint: epoch {self.epoch} step {step}/{self.steps}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.is_terminal:
            print(file=sys.stderr, flush=True)

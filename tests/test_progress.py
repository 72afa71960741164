"""What a person sees while training: durations and the per-epoch line."""

from summarizer.config import TrainConfig
from summarizer.progress import epoch_line, format_duration
from summarizer.training import TrainingState


def test_format_duration_is_hours_minutes_seconds() -> None:
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.9) == "1:02:05"
    assert format_duration(None) == ""


def test_epoch_line_shows_losses_throughput_and_eta() -> None:
    state = TrainingState(epoch=1, elapsed_seconds=120.0)
    row = {
        "epoch": 1,
        "train_loss": 4.5,
        "val_loss": 4.25,
        "val_perplexity": 70.1,
        "learning_rate": 0.002,
        "samples_per_second": 250.0,
        "seconds": 120.0,
    }
    line = epoch_line(row, TrainConfig(epochs=3, max_wall_minutes=60.0), state)
    assert line.startswith("epoch 1/3 loss 4.5000 val_loss 4.2500 val_perplexity 70.10")
    assert "250.0 samples/s" in line and "elapsed 0:02:00" in line and line.endswith("eta 0:04:00")


def test_epoch_line_estimates_the_remaining_epochs_capped_by_the_opt_in_budget() -> None:
    row = {"epoch": 2, "train_loss": 3.0, "val_loss": 3.1, "val_perplexity": 22.2, "learning_rate": 1e-3,
           "samples_per_second": 250.0, "seconds": 600.0}  # fmt: skip
    state = TrainingState(epoch=2, elapsed_seconds=1200.0)
    assert epoch_line(row, TrainConfig(epochs=5), state).endswith("elapsed 0:20:00 eta 0:30:00")
    capped = TrainConfig(epochs=5, max_wall_minutes=30.0)
    assert epoch_line(row, capped, state).endswith("eta 0:10:00")

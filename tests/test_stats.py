"""Nearest-rank length percentiles, from lengths or from a histogram."""

from collections import Counter

from summarizer.stats import length_percentiles


def test_percentiles_use_nearest_rank_and_report_the_maximum() -> None:
    assert length_percentiles(range(100, 0, -1)) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert length_percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7}
    assert length_percentiles([]) == {"p50": 0, "p90": 0, "p99": 0, "max": 0}


def test_a_histogram_gives_the_same_figures_as_its_lengths() -> None:
    lengths = [3, 3, 3, 9, 12, 12, 40]
    assert length_percentiles(Counter(lengths)) == length_percentiles(lengths)
    assert length_percentiles(Counter(lengths))["p50"] == 9

"""Descriptive statistics the data stages report: nearest-rank percentiles of lengths."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

PERCENTILES = (50, 90, 99)


def length_percentiles(lengths: Mapping[int, int] | Iterable[int]) -> dict[str, int]:
    """Nearest-rank percentiles (the smallest length covering q% of the items) and the maximum, as integers.

    ``lengths`` is a histogram (length -> count, memory bounded by the distinct lengths) or the lengths.
    All zero when there are none.
    """
    histogram = lengths if isinstance(lengths, Mapping) else Counter(lengths)
    total = sum(histogram.values())
    result = dict.fromkeys([f"p{q}" for q in PERCENTILES] + ["max"], 0)
    if total == 0:
        return result
    ranks = {f"p{q}": max(1, math.ceil(q / 100 * total)) for q in PERCENTILES}
    seen = 0
    for length in sorted(histogram):
        seen += histogram[length]
        for name, rank in ranks.items():
            if result[name] == 0 and seen >= rank:
                result[name] = length
    result["max"] = max(histogram)
    return result

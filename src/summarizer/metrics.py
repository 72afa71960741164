"""Summary quality: ROUGE (the `rouge-score` package), lead baselines and perplexity.

ROUGE values here are mean F1 in [0, 1]; the evaluate stage reports them as percentages.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import re
from collections.abc import Sequence

from rouge_score import rouge_scorer

from summarizer.text import first_words

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@functools.cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def scorer_settings() -> dict[str, object]:
    """What the scores were computed with, to log beside them."""
    return {
        "package": "rouge-score",
        "version": importlib.metadata.version("rouge-score"),
        "rouge_types": list(ROUGE_TYPES),
        "use_stemmer": True,
        "statistic": "f1 (mean over examples)",
        "rougeLsum_sentence_split": "after . ! ? followed by whitespace",
    }


def _sentences_on_lines(text: str) -> str:
    """rougeLsum treats newlines as sentence boundaries; split sentences onto lines first."""
    return "\n".join(part for part in _SENTENCE_END.split(text.strip()) if part)


def _f1_scores(prediction: str, reference: str) -> dict[str, float]:
    scores = _scorer().score(_sentences_on_lines(reference), _sentences_on_lines(prediction))
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F1 of ``predictions`` against ``references`` (stemming on).

    Raises:
        ValueError: the two sequences differ in length or are empty.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        for name, value in _f1_scores(prediction, reference).items():
            totals[name] += value
    return {name: total / len(predictions) for name, total in totals.items()}


def rouge_l_per_example(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return [
        _scorer().score(reference, prediction)["rougeL"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def best_lead(
    texts: Sequence[str], references: Sequence[str], lead_words: Sequence[int]
) -> tuple[int, dict[int, dict[str, float]]]:
    """Score the lead baseline for each N in ``lead_words``; the best N is the one with the highest ROUGE-L.

    Returns:
        (best N, {N: ROUGE scores}) so a report can show every N, not only the best.
    """
    scores_by_words = {
        words: rouge([first_words(text, words) for text in texts], references) for words in lead_words
    }
    best = max(scores_by_words, key=lambda words: (scores_by_words[words]["rougeL"], -words))
    return best, scores_by_words


def perplexity(mean_negative_log_likelihood: float) -> float:
    """exp of the mean token negative log-likelihood (capped at exp(700) rather than overflowing)."""
    return math.exp(min(mean_negative_log_likelihood, 700.0))

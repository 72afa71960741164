import math

import pytest

from summarizer import metrics
from summarizer.text import first_words


def test_rouge_of_identical_strings_is_one() -> None:
    scores = metrics.rouge(["the cat sat on the mat."], ["the cat sat on the mat."])
    assert scores == pytest.approx(dict.fromkeys(metrics.ROUGE_TYPES, 1.0))


def test_rouge_matches_hand_computed_pair() -> None:
    # prediction "the cat lay on the mat", reference "the cat sat on the mat": 6 tokens each.
    # Unigrams: the x2, cat, on, mat shared = 5 of 6 -> P = R = F1 = 5/6.
    # Bigrams: (the cat) (on the) (the mat) shared = 3 of 5 -> F1 = 3/5.
    # LCS: the cat on the mat = 5 -> F1 = 5/6.
    scores = metrics.rouge(["the cat lay on the mat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)


def test_rouge_uses_stemming_and_averages_examples() -> None:
    scores = metrics.rouge(["running tools", "alpha"], ["run tool", "beta"])
    assert scores["rouge1"] == pytest.approx(0.5)


def test_rouge_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.rouge(["a", "b"], ["a"])


def test_lead_baseline_takes_first_words() -> None:
    assert first_words("one two  three\nfour five", 4) == "one two three four"


def test_best_lead_picks_the_n_with_highest_rouge_l() -> None:
    texts = ["alpha beta gamma delta epsilon zeta eta theta"] * 2
    references = ["alpha beta gamma delta"] * 2
    best, scores = metrics.best_lead(texts, references, [2, 4, 8])
    assert best == 4
    assert scores[4]["rougeL"] == pytest.approx(1.0)
    assert scores[2]["rougeL"] < 1.0 and scores[8]["rougeL"] < 1.0


def test_perplexity_is_exp_of_the_mean_nll_and_does_not_overflow() -> None:
    assert metrics.perplexity(math.log(37.0)) == pytest.approx(37.0)
    assert metrics.perplexity(0.0) == 1.0
    assert metrics.perplexity(1e6) == math.exp(700.0)  # a diverged model reports a huge but finite figure

import math

import numpy as np
import pytest

from summarizer import metrics


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
    assert metrics.lead_baseline("one two  three\nfour five", 4) == "one two three four"


def test_best_lead_picks_the_n_with_highest_rouge_l() -> None:
    texts = ["alpha beta gamma delta epsilon zeta eta theta"] * 2
    references = ["alpha beta gamma delta"] * 2
    best, scores = metrics.best_lead(texts, references, [2, 4, 8])
    assert best == 4
    assert scores[4]["rougeL"] == pytest.approx(1.0)
    assert scores[2]["rougeL"] < 1.0 and scores[8]["rougeL"] < 1.0


def test_perplexity_of_uniform_model_is_vocabulary_size_with_padding_excluded() -> None:
    vocab = 37
    log_probs = np.full((2, 4, vocab), -math.log(vocab), dtype=np.float32)
    targets = np.array([[5, 6, 7, 0], [8, 0, 0, 0]])
    log_probs[0, 3, :] = -100.0  # garbage at padded positions must not count
    log_probs[1, 1:, :] = -100.0
    total, count = metrics.token_nll(log_probs, targets, pad_id=0)
    assert count == 4
    assert metrics.perplexity(total, count) == pytest.approx(vocab, rel=1e-3)


def test_perplexity_without_tokens_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        metrics.perplexity(0.0, 0)

"""The padding-masked token loss that training, validation and test perplexity share."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from summarizer.losses import negative_log_likelihood, token_losses


def test_token_losses_mask_padding_and_add_smoothing_and_coverage() -> None:
    probabilities = np.array([[[0.5, 0.2, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]])
    log_probs = tf.constant(np.log(probabilities), tf.float32)  # (1, 3, 4)
    target_out = tf.constant([[2, 1, 0]])  # the last position is PAD
    coverage = tf.constant([[0.5, 1.5, 100.0]])
    outputs = {"log_probs": log_probs, "coverage_loss": coverage}

    objective, nll, tokens = token_losses(outputs, target_out)
    expected_nll = -math.log(0.2) - math.log(0.6)
    assert float(tokens) == 2.0
    assert float(nll) == pytest.approx(expected_nll, rel=1e-6)
    assert float(objective) == pytest.approx(expected_nll, rel=1e-6)

    objective, nll, _ = token_losses(outputs, target_out, label_smoothing=0.1, coverage_weight=2.0)
    uniform = -np.log(probabilities[0, :2]).mean(axis=-1).sum()  # mean over the vocabulary of -log p
    assert float(objective) == pytest.approx(0.9 * expected_nll + 0.1 * uniform + 2.0 * (0.5 + 1.5), rel=1e-6)
    assert float(nll) == pytest.approx(expected_nll, rel=1e-6)

    scored = {"target_log_probs": tf.constant([[math.log(0.2), math.log(0.6), 0.0]])}
    assert float(token_losses(scored, target_out)[0]) == pytest.approx(expected_nll, rel=1e-6)


def test_negative_log_likelihood_of_a_uniform_model_gives_the_vocabulary_as_perplexity() -> None:
    vocab = 7
    log_probs = tf.fill((2, 3, vocab), -math.log(vocab))
    targets = tf.constant([[1, 2, 0], [3, 0, 0]])  # three real tokens, padding excluded
    total, count = negative_log_likelihood(log_probs, targets)
    assert count == 3
    assert total == pytest.approx(3 * math.log(vocab), rel=1e-6)

"""The padding-masked token loss: the one implementation training, validation and test perplexity share.

Perplexity everywhere is :func:`summarizer.metrics.perplexity` of the mean of this negative log-likelihood.
"""

from __future__ import annotations

import tensorflow as tf

from summarizer.tokenization import PAD_ID


def token_losses(
    outputs: dict[str, tf.Tensor],
    target_out: tf.Tensor,
    label_smoothing: float = 0.0,
    coverage_weight: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Sums over non-PAD target tokens, in float32: (objective, negative log-likelihood, token count).

    ``outputs`` holds the model's final (copy-mixed) ``log_probs`` (batch, time, vocab) or, from
    ``Summarizer.score``, only the targets' ``target_log_probs`` (batch, time); label smoothing needs the
    former. Per token the objective is ``(1 - eps) * nll + eps * mean_v(-log p_v) + coverage_weight *
    coverage_loss``; the NLL alone gives perplexity.
    """
    mask = tf.cast(tf.not_equal(target_out, PAD_ID), tf.float32)  # (batch, time)
    if "target_log_probs" in outputs:
        nll = -tf.cast(outputs["target_log_probs"], tf.float32)  # (batch, time)
    else:
        nll = -tf.gather(tf.cast(outputs["log_probs"], tf.float32), target_out, axis=-1, batch_dims=2)
    objective = nll
    if label_smoothing > 0:
        mean_log_prob = tf.reduce_mean(tf.cast(outputs["log_probs"], tf.float32), axis=-1)  # (batch, time)
        objective = (1.0 - label_smoothing) * nll - label_smoothing * mean_log_prob
    if coverage_weight > 0:
        objective += coverage_weight * tf.cast(outputs["coverage_loss"], tf.float32)
    return tf.reduce_sum(objective * mask), tf.reduce_sum(nll * mask), tf.reduce_sum(mask)


def negative_log_likelihood(log_probs: tf.Tensor, target_out: tf.Tensor) -> tuple[float, int]:
    """Summed NLL of ``target_out`` under full (batch, time, vocab) ``log_probs`` and its token count."""
    target_out = tf.convert_to_tensor(target_out, tf.int32)
    _, nll_sum, tokens = token_losses({"log_probs": log_probs}, target_out)
    return float(nll_sum), int(tokens)

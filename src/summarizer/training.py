"""The custom training loop: loss, mixed precision, AdamW, warmup, LR reduction, early stopping, checkpoints.

It receives a :class:`~summarizer.distribution.Distribution` and never imports Horovod. Each step follows
Horovod's ``tensorflow2_mnist.py`` with the Keras 3 changes of DEVELOPERS.md: gradients are taken w.r.t.
``[v.value for v in model.trainable_variables]``, averaged across ranks, clipped and applied by the optimizer.

Exact loss weighting across ranks: each rank computes the *sum* of its per-token losses and scales it by
``size / global_tokens`` (``global_tokens`` = all ranks' non-PAD target tokens, from an allreduce). The
average of the ranks' gradients is then the gradient of the token-weighted mean loss over the global batch,
whatever the number of tokens each rank holds: the gradient one process would get on the whole batch.

Gradient accumulation (``train.accumulate_steps`` = N > 1): an optimizer step takes N micro-batches per
rank. Their target tokens are counted first and summed over ranks (one allreduce), each micro-batch's loss
sum is scaled by ``size / global_tokens`` and its gradients are added into accumulators (no collective), then
one grouped allreduce averages the accumulated gradients and the optimizer applies them once: the gradient of
the token-weighted mean loss over all N micro-batches of all ranks, as one batch N times as large would give.
N = 1 runs exactly the one-batch step above (same ops, same bits).

Mixed precision: ``float16`` wraps AdamW in a dynamic ``keras.optimizers.LossScaleOptimizer``. Gradients of
the scaled loss are averaged *before* the optimizer unscales them and checks them for inf/NaN, so every rank
sees the same averaged gradients and skips an overflowing step together (loss scales stay equal).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from summarizer import records
from summarizer.config import TrainConfig
from summarizer.distribution import Distribution
from summarizer.losses import token_losses
from summarizer.tokenization import PAD_ID

_BATCH_SPEC = {
    name: tf.TensorSpec([None, None], tf.int32) for name in ("source_ids", "target_in", "target_out")
}
Batch = dict[str, tf.Tensor]


@dataclass
class TrainingState:
    """Everything the loop decides from, saved in checkpoints and broadcast from the chief each epoch."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps (drives warmup)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    lr_scale: float = 1.0  # product of plateau reductions
    epochs_without_improvement: int = 0  # early stopping counter
    epochs_since_lr_change: int = 0  # ReduceLROnPlateau counter
    elapsed_seconds: float = 0.0  # wall time of all epochs, across resumes
    run_id: str | None = None
    stopped_by: str = ""  # early_stopping | epochs | wall_clock (the opt-in train.max_wall_minutes cap)
    stop_reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    # Inside an epoch (a checkpoint between two epochs has epoch_step 0): the optimizer steps done of
    # epoch + 1 (train.accumulate_steps micro-batches each, so a resume lands on an optimizer step), and what
    # the rest of the epoch adds to: every rank's loss, token and example sums, train seconds, the last LR.
    epoch_step: int = 0
    epoch_partials: list[dict[str, float]] = field(default_factory=list)
    epoch_train_seconds: float = 0.0
    epoch_learning_rate: float = 0.0


def learning_rate_at(config: TrainConfig, size: int, step: int, lr_scale: float = 1.0) -> float:
    """Linear warmup from ``lr`` to ``lr * size`` (Goyal et al.), times the plateau reductions so far."""
    warmup = 1.0 if config.warmup_steps == 0 else min(1.0, step / config.warmup_steps)
    return config.learning_rate * (1.0 + (size - 1) * warmup) * lr_scale


def _last_epoch_seconds(state: TrainingState) -> float:
    return state.history[-1]["seconds"] if state.history else 0.0


def update_after_epoch(state: TrainingState, config: TrainConfig, val_loss: float) -> None:
    """Track the best val loss, reduce the LR on plateaus (floor ``min_learning_rate * size``), stop."""
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.best_epoch = val_loss, state.epoch
        state.epochs_without_improvement = state.epochs_since_lr_change = 0
    else:
        state.epochs_without_improvement += 1
        state.epochs_since_lr_change += 1
        if state.epochs_since_lr_change >= config.lr_reduce_patience:
            floor = config.min_learning_rate / config.learning_rate
            state.lr_scale = max(state.lr_scale * config.lr_reduce_factor, floor)
            state.epochs_since_lr_change = 0
    if state.epochs_without_improvement >= config.early_stopping_patience:
        state.stopped_by = "early_stopping"
        state.stop_reason = (
            f"early stopping: no val loss improvement for {state.epochs_without_improvement} epochs"
        )
    elif state.epoch >= config.epochs:
        state.stopped_by, state.stop_reason = "epochs", f"completed {config.epochs} epochs"
    elif _over_wall_budget(state, config):
        state.stopped_by = "wall_clock"
        state.stop_reason = (
            f"the wall-clock cap train.max_wall_minutes={config.max_wall_minutes:g} cut training short after "
            f"epoch {state.epoch} of {config.epochs}: another epoch would not fit in it"
        )


def _over_wall_budget(state: TrainingState, config: TrainConfig) -> bool:
    """Whether another epoch as long as the last would overrun the opt-in cap (0: no cap)."""
    budget_seconds = config.max_wall_minutes * 60
    return budget_seconds > 0 and state.elapsed_seconds + _last_epoch_seconds(state) > budget_seconds


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """AdamW with per-tensor ``clipnorm`` (applied to the averaged gradients); loss scaling under float16."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, clipnorm=config.clipnorm
    )
    if config.precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class Trainer:
    """One model and optimizer replicated on every rank; steps and evaluation in ``tf.function``."""

    def __init__(self, model: keras.Model, config: TrainConfig, distribution: Distribution) -> None:
        self.model = model
        self.config = config
        self.distribution = distribution
        self.optimizer = make_optimizer(config)
        self._loss_scaling = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        self._train_step = tf.function(self._step, input_signature=[_BATCH_SPEC])
        self._evaluate_step = tf.function(self._evaluate, input_signature=[_BATCH_SPEC])
        # Gradient accumulation (built on first use): one gradient sum per trainable variable, zero between
        # optimizer steps, so never checkpointed or broadcast.
        self._accumulators: list[tf.Variable] = []
        scale_spec = tf.TensorSpec([], tf.float32)
        self._accumulate_step = tf.function(self._accumulate, input_signature=[_BATCH_SPEC, scale_spec])
        self._apply_accumulated_step = tf.function(self._apply_accumulated)
        self._drained_gradients = tf.function(self._drain)

    def build(self) -> None:
        """Create the optimizer's variables (the model's exist) before restoring or broadcasting them."""
        self.optimizer.build(self.model.trainable_variables)

    @property
    def variables(self) -> list[Any]:
        """Every model and optimizer variable: what checkpoints save and the chief broadcasts."""
        return list(self.model.variables) + list(self.optimizer.variables)

    def gradients(self, batch: dict[str, tf.Tensor]) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
        """Averaged gradients of the global token-weighted mean loss; this rank's loss sum and token count.

        Under float16 the gradients are those of the scaled loss (the optimizer unscales them).
        """
        tokens = tf.reduce_sum(tf.cast(tf.not_equal(batch["target_out"], PAD_ID), tf.float32))
        global_tokens = tf.maximum(self.distribution.sum(tokens), 1.0)
        with tf.GradientTape() as tape:
            outputs = self._forward(batch, training=True)
            loss_sum, _, _ = token_losses(
                outputs, batch["target_out"], self.config.label_smoothing, self.config.coverage_weight
            )
            loss = loss_sum * (self.distribution.size / global_tokens)
            if self._loss_scaling:
                loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(loss, [variable.value for variable in self.model.trainable_variables])
        return self._average(gradients), loss_sum, tokens

    def _average(self, gradients: Sequence[Any]) -> list[tf.Tensor]:
        """Gradients averaged over ranks as ``train.horovod`` says (compression; one call or per tensor)."""
        horovod = self.config.horovod
        return self.distribution.average_gradients(
            gradients, horovod.fp16_allreduce, horovod.overlap_allreduce
        )

    def _forward(self, batch: dict[str, tf.Tensor], training: bool) -> dict[str, tf.Tensor]:
        """The full distribution when label smoothing needs it, else only the targets' log-probabilities."""
        if self.config.label_smoothing > 0:
            return self.model(_inputs(batch), training=training)
        return self.model.score(batch, training=training)

    def _step(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        gradients, loss_sum, tokens = self.gradients(batch)
        self.optimizer.apply(gradients, self.model.trainable_variables)
        return loss_sum, tokens

    def train_step(self, batch: dict[str, tf.Tensor], learning_rate: float) -> tuple[float, float]:
        """One optimizer step on one batch; this rank's loss sum and target token count."""
        self.optimizer.learning_rate = learning_rate
        loss_sum, tokens = self._train_step(batch)
        return float(loss_sum), float(tokens)

    def optimizer_step(self, micro_batches: Sequence[Batch], learning_rate: float) -> tuple[float, float]:
        """One optimizer step on this rank's micro-batches (every rank passes as many); loss sum and tokens.

        One micro-batch is :meth:`train_step`. More accumulate their gradients and apply them once.
        """
        if len(micro_batches) == 1:
            return self.train_step(micro_batches[0], learning_rate)
        self.optimizer.learning_rate = learning_rate
        loss_sum, tokens = self._accumulate_all(micro_batches)
        self._apply_accumulated_step()
        return loss_sum, tokens

    def accumulated_gradients(self, micro_batches: Sequence[Batch]) -> tuple[list[tf.Tensor], float, float]:
        """Averaged gradients of the token-weighted mean loss over every rank's micro-batches (not applied).

        What :meth:`optimizer_step` applies for more than one micro-batch; this rank's loss sum and tokens.
        """
        loss_sum, tokens = self._accumulate_all(micro_batches)
        return list(self._drained_gradients()), loss_sum, tokens

    def _accumulate_all(self, micro_batches: Sequence[Batch]) -> tuple[float, float]:
        """Add every micro-batch's share of the gradient to the accumulators; this rank's loss sum, tokens."""
        if not self._accumulators:
            self._accumulators = [
                tf.Variable(tf.zeros_like(variable.value), trainable=False)
                for variable in self.model.trainable_variables
            ]
        counts = [_target_tokens(batch) for batch in micro_batches]
        # Allreduce: the optimizer step's target tokens over all micro-batches of all ranks weight each loss.
        global_tokens = tf.maximum(self.distribution.sum(tf.add_n(counts)), 1.0)
        scale = tf.cast(self.distribution.size, tf.float32) / global_tokens
        loss_sum = 0.0
        for batch in micro_batches:
            loss_sum += float(self._accumulate_step(batch, scale))
        return loss_sum, float(tf.add_n(counts))

    def _accumulate(self, batch: Batch, scale: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            outputs = self._forward(batch, training=True)
            loss_sum, _, _ = token_losses(
                outputs, batch["target_out"], self.config.label_smoothing, self.config.coverage_weight
            )
            loss = loss_sum * scale
            if self._loss_scaling:
                loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(loss, [variable.value for variable in self.model.trainable_variables])
        for accumulator, gradient in zip(self._accumulators, gradients, strict=True):
            accumulator.assign_add(tf.convert_to_tensor(gradient))  # embeddings' IndexedSlices made dense
        return loss_sum

    def _drain(self) -> list[tf.Tensor]:
        """The accumulated gradients averaged over ranks (one grouped allreduce); the accumulators zeroed."""
        averaged = self._average([accumulator.read_value() for accumulator in self._accumulators])
        for accumulator in self._accumulators:
            accumulator.assign(tf.zeros_like(accumulator))
        return averaged

    def _apply_accumulated(self) -> None:
        self.optimizer.apply(self._drain(), self.model.trainable_variables)

    def _evaluate(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        outputs = self.model.score(batch, training=False)
        _, nll_sum, tokens = token_losses(outputs, batch["target_out"])
        return nll_sum, tokens

    def evaluate(self, dataset: tf.data.Dataset) -> float:
        """Token-weighted NLL over every rank's shard (no label smoothing or coverage term)."""
        nll_sum = tokens = 0.0
        for batch in dataset:  # ranks may hold different numbers of batches: no collective inside
            batch_nll, batch_tokens = self._evaluate_step(batch)
            nll_sum, tokens = nll_sum + float(batch_nll), tokens + float(batch_tokens)
        totals = self.distribution.average({"nll": nll_sum, "tokens": tokens})
        if totals["tokens"] == 0:
            raise ValueError("the val split has no target tokens: the tokenize stage wrote no val examples")
        return totals["nll"] / totals["tokens"]


def _inputs(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"source_ids": batch["source_ids"], "target_in": batch["target_in"]}


def _target_tokens(batch: Batch) -> tf.Tensor:
    return tf.reduce_sum(tf.cast(tf.not_equal(batch["target_out"], PAD_ID), tf.float32))


def batch_buckets(
    config: TrainConfig, max_source_tokens: int, max_target_tokens: int
) -> records.Buckets | None:
    """None for ``examples`` batches; for ``tokens`` batches, source- and target-length buckets within the
    budget (:func:`records.token_buckets`)."""
    if config.batch_type == "examples":
        return None
    return records.token_buckets(
        config.batch_size,
        max_source_tokens,
        config.bucket_width,
        max_target_length=max_target_tokens,
        target_width=config.target_bucket_width,
    )


def steps_per_epoch(
    files: Sequence[str],
    config: TrainConfig,
    distribution: Distribution,
    buckets: records.Buckets | None = None,
) -> int:
    """Optimizer steps every rank runs per epoch: the fewest full batches of any rank's shard, divided by
    ``accumulate_steps`` (at least one).

    Every rank must run the same number of steps, or the next gradient allreduce waits forever. The count of
    full batches of a shard follows from its examples' lengths alone (:func:`records.full_batches`), whatever
    the epoch's shuffle; the minimum over ranks is taken by a collective, so every rank gets the same number.
    """
    lengths = records.example_lengths(
        files, num_shards=distribution.num_shards, shard_index=distribution.shard_index
    )
    if distribution.minimum(len(lengths)) == 0:
        raise ValueError(
            f"a rank holds no training examples: {len(files)} train shard(s) for "
            f"{distribution.size} workers; write more shards or use fewer workers"
        )
    fewest = distribution.minimum(records.full_batches(lengths, buckets, config.batch_size))
    return max(1, fewest // config.accumulate_steps)


def train_dataset(
    files: Sequence[str],
    config: TrainConfig,
    epoch: int,
    steps: int,
    distribution: Distribution,
    skip: int = 0,
    buckets: records.Buckets | None = None,
) -> tf.data.Dataset:
    """This rank's micro-batches for ``epoch``'s ``steps`` optimizer steps, shuffled by ``seed + epoch``,
    after the first ``skip`` optimizer steps (``accumulate_steps`` micro-batches each).

    The order depends only on the seed and the epoch (bucketing fills its buckets from that order): a run
    resumed at step ``skip`` of an epoch sees the batches the uninterrupted run would have seen. The stream
    repeats, so every rank has its ``steps`` whatever its shard holds.
    """
    dataset = records.read_dataset(
        files,
        config.batch_size,
        shuffle=True,
        seed=config.seed + epoch,
        repeat=True,
        num_shards=distribution.num_shards,
        shard_index=distribution.shard_index,
        drop_remainder=True,
        buckets=buckets,
    )
    return dataset.take(steps * config.accumulate_steps).skip(skip * config.accumulate_steps)


def optimizer_steps(batches: Iterable[Batch], accumulate_steps: int) -> Iterator[list[Batch]]:
    """The micro-batches of each optimizer step, ``accumulate_steps`` at a time."""
    group: list[Batch] = []
    for batch in batches:
        group.append(batch)
        if len(group) == accumulate_steps:
            yield group
            group = []
    if group:
        raise ValueError(f"{len(group)} micro-batch(es) left over: not a multiple of {accumulate_steps}")


__all__ = [
    "Trainer",
    "TrainingState",
    "batch_buckets",
    "learning_rate_at",
    "make_optimizer",
    "optimizer_steps",
    "steps_per_epoch",
    "train_dataset",
    "update_after_epoch",
]

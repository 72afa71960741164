"""Run under ``horovodrun -np 2``: exercise every collective and write this rank's results as JSON.

Usage: python distribution_worker.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from summarizer import distribution


def main(out_dir: Path) -> None:
    dist = distribution.init(dynamic_timeline=True)
    dist.start_timeline(out_dir / "timeline.json")
    rank = dist.rank
    gradients = [
        tf.fill([2, 3], float(rank + 1)),
        tf.IndexedSlices(tf.constant([[float(rank)]]), tf.constant([rank]), dense_shape=tf.constant([2, 1])),
    ]
    averaged = dist.average_gradients(gradients)
    averaged_fp16 = dist.average_gradients([tf.fill([4], 0.5 + rank)], compression_fp16=True)
    graph_sum = tf.function(lambda value: dist.sum(value))(tf.constant([rank + 1.0, 10.0 * rank]))

    keras.utils.set_random_seed(100 + rank)  # different initial weights on each rank
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    before = [variable.numpy().tolist() for variable in layer.weights]
    dist.broadcast_variables(layer.weights)
    after = [variable.numpy().tolist() for variable in layer.weights]

    result = {
        "rank": rank,
        "size": dist.size,
        "is_chief": dist.is_chief,
        "shard_index": dist.shard_index,
        "num_shards": dist.num_shards,
        "averaged": [np.asarray(tensor).tolist() for tensor in averaged],
        "averaged_fp16": np.asarray(averaged_fp16[0]).tolist(),
        "graph_sum": graph_sum.numpy().tolist(),
        "average_scalar": dist.average(float(rank * 4)),
        "average_dict": dist.average({"loss": 1.0 + rank, "tokens": 10.0 * (rank + 1)}),
        "minimum": dist.minimum(7 - rank * 3),
        "object": dist.broadcast_object({"from_rank": rank}),
        "weights_before": before,
        "weights_after": after,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }
    dist.barrier()
    dist.stop_timeline()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Run by the GPU virtualenv's python: print what its TensorFlow and Horovod builds are, as one JSON line."""

from __future__ import annotations

import json
import sysconfig

import horovod
import horovod.tensorflow as hvd
import tensorflow as tf


def loaded_libraries(fragment: str) -> list[str]:
    """Files mapped into this process whose path contains ``fragment`` (what the dynamic linker chose)."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return sorted({line.split()[-1] for line in maps if fragment in line})


def main() -> None:
    info = tf.sysconfig.get_build_info()
    report = {
        "tensorflow": tf.__version__,
        "built_with_cuda": tf.test.is_built_with_cuda(),
        "cuda_version": info.get("cuda_version"),
        "cudnn_version": str(info.get("cudnn_version")),
        "visible_gpus": len(tf.config.list_physical_devices("GPU")),
        "horovod": horovod.__version__,
        "nccl_built": hvd.nccl_built(),  # NCCL_VERSION_CODE of the header Horovod was compiled with, or 0
        "mpi_built": bool(hvd.mpi_built()),
        "gloo_built": bool(hvd.gloo_built()),
        "site_packages": sysconfig.get_paths()["purelib"],
        "nccl_libraries": loaded_libraries("libnccl.so"),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Data-parallel training across processes: the only module that imports Horovod.

:func:`init` returns a :class:`HorovodDistribution` when the process was started by ``horovodrun`` (or
``mpirun``) and a one-process :class:`LocalDistribution` otherwise; both offer the same interface, so the
training loop never branches on the launcher. Horovod is imported inside :func:`init` only: importing this
module costs nothing and works where Horovod is absent.

``horovod.tensorflow.keras`` is never used: with Keras 3 it silently skips gradient averaging and calls
``.ref()``, which Keras 3 variables lack (see DEVELOPERS.md). Collectives take the backend variables
(``variable.value``) instead, and every collective must run on every rank in the same order, even when only
the chief uses the result.

Timeline: ``init(dynamic_timeline=True)`` sets ``HOROVOD_TIMELINE=DYNAMIC`` before ``hvd.init()`` so that
:meth:`Distribution.start_timeline` can record into a file chosen at run time; alternatively launch with
``horovodrun --timeline-filename PATH`` (which sets ``HOROVOD_TIMELINE=PATH`` for the whole run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import tensorflow as tf

from summarizer.config import HorovodConfig

# How a collective fails when another rank has died.
PEER_FAILURE_MESSAGES = (
    "Horovod has been shut down",
    "Connection reset by peer",
    "Connection closed by peer",
)
# Set by horovodrun (Gloo) or by the MPI launchers horovodrun uses.
LAUNCHER_VARIABLES = ("HOROVOD_RANK", "HOROVOD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
Device = TypeVar("Device")  # tf.config.PhysicalDevice, or anything standing for one


def _backend_variable(variable: Any) -> tf.Variable:
    """The ``tf.Variable`` behind a Keras 3 variable (a ``tf.Variable`` is returned as is)."""
    return variable if isinstance(variable, tf.Variable) else variable.value


def _dense(gradient: Any) -> tf.Tensor:
    """Embedding gradients arrive as ``IndexedSlices``; averaging them densely keeps one fused allreduce."""
    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


def _pack(value: float | Mapping[str, float]) -> tuple[list[str] | None, tf.Tensor]:
    if isinstance(value, Mapping):
        names = sorted(value)
        return names, tf.constant([float(value[name]) for name in names], dtype=tf.float64)
    return None, tf.constant([float(value)], dtype=tf.float64)


def _unpack(names: list[str] | None, packed: tf.Tensor) -> float | dict[str, float]:
    numbers = [float(number) for number in packed.numpy()]
    return numbers[0] if names is None else dict(zip(names, numbers, strict=True))


def gpu_for_local_rank(gpus: Sequence[Device], local_rank: int, local_size: int) -> Device | None:
    """The GPU this process trains on: one per process, chosen by its rank on this host.

    Args:
        gpus: the GPUs this process sees (``tf.config.list_physical_devices("GPU")``).
        local_rank: the process's rank among the ``local_size`` processes on this host.

    Returns:
        ``gpus[local_rank]`` when every local process can have its own; the only GPU when the launcher gave
        each process one (``CUDA_VISIBLE_DEVICES`` per rank); None without GPUs (CPU training).

    Raises:
        ValueError: more processes on this host than GPUs, which would put two ranks on one GPU.
    """
    if not gpus:
        return None
    if len(gpus) == 1:
        return gpus[0]
    if local_size <= len(gpus):
        return gpus[local_rank]
    raise ValueError(
        f"{local_size} processes on this host but {len(gpus)} GPUs visible: start at most {len(gpus)} ranks "
        "per host (train.workers, or slots per host in -H/--hostfile), or make every GPU visible"
    )


class Distribution:
    """One process among ``size``; this base is the one-process case (every collective is the identity)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    controller: str = ""  # Horovod's controller at run time: "MPI" or "Gloo"
    cycle_time_ms: float | None = None  # Horovod's cycle (HOROVOD_CYCLE_TIME); None without Horovod

    @property
    def is_chief(self) -> bool:
        """Rank 0 alone checkpoints, logs and talks to MLflow."""
        return self.rank == 0

    @property
    def shard_index(self) -> int:
        return self.rank

    @property
    def num_shards(self) -> int:
        return self.size

    def pin_gpu(self) -> None:
        """Let TensorFlow grow GPU memory on demand (one process owns every GPU)."""
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)

    def average_gradients(
        self, gradients: Sequence[Any], compression_fp16: bool = False, overlap: bool = False
    ) -> list[tf.Tensor]:
        """The mean of each gradient over ranks (usable inside ``tf.function``).

        ``overlap``: one allreduce per tensor, each free to start while the backward pass still runs, instead
        of one grouped allreduce after it.
        """
        return [_dense(gradient) for gradient in gradients]

    def sum(self, tensor: tf.Tensor) -> tf.Tensor:
        """The element-wise sum of ``tensor`` over ranks (usable inside ``tf.function``)."""
        return tf.convert_to_tensor(tensor)

    def minimum(self, value: int) -> int:
        """The smallest ``value`` over ranks."""
        return int(value)

    def average(self, value: float | Mapping[str, float]) -> float | dict[str, float]:
        """The mean over ranks of a number or of a dict of numbers (same keys on every rank)."""
        names, packed = _pack(value)
        return _unpack(names, packed)

    def broadcast_variables(self, variables: Sequence[Any]) -> None:
        """Give every rank the chief's values of ``variables`` (Keras 3 or ``tf.Variable``)."""

    def broadcast_object(self, value: Any) -> Any:
        """The chief's ``value`` (any picklable object) on every rank."""
        return value

    def allgather_object(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        return [value]

    def maximum(self, values: Sequence[float]) -> list[float]:
        """The element-wise maximum of ``values`` over ranks: any rank's flag, the chief's proposal."""
        return [float(value) for value in values]

    def is_peer_failure(self, error: BaseException) -> bool:
        """Whether ``error`` is a collective failing because another rank died or left."""
        return False

    def barrier(self) -> None:
        """Return once every rank has reached this call."""

    def start_timeline(self, path: str | os.PathLike[str], mark_cycles: bool = False) -> None:
        """Record a Horovod timeline (a Chrome trace of the collectives) into ``path``; none here.

        ``mark_cycles``: also mark the start of each of Horovod's coordination cycles (``CYCLE_START``).
        """

    def stop_timeline(self) -> None:
        """Close the timeline file."""


class LocalDistribution(Distribution):
    """A single process without Horovod."""


class HorovodDistribution(Distribution):
    """Processes started by ``horovodrun``; ``hvd`` is the initialized ``horovod.tensorflow`` module."""

    def __init__(self, hvd: Any) -> None:
        self._hvd = hvd
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self.controller = "MPI" if hvd.mpi_enabled() else "Gloo"

    def pin_gpu(self) -> None:
        """One GPU per process, chosen by local rank (Horovod's tensorflow2_mnist.py).

        Without GPUs, the host's cores are shared out between its processes instead: each TensorFlow would
        otherwise start one thread per core, and ``local_size`` processes would oversubscribe the CPU.
        A thread count set before (``tf.config.threading``) is kept.
        """
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        gpu = gpu_for_local_rank(gpus, self.local_rank, self._hvd.local_size())
        if gpu is not None:
            tf.config.set_visible_devices(gpu, "GPU")
        elif not tf.config.threading.get_intra_op_parallelism_threads():
            threads = max(1, (os.cpu_count() or 1) // self._hvd.local_size())
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)

    def average_gradients(
        self, gradients: Sequence[Any], compression_fp16: bool = False, overlap: bool = False
    ) -> list[tf.Tensor]:
        if self.size == 1:
            # One rank: nothing to average, and Horovod would still hold each step for its next cycle.
            return super().average_gradients(gradients)
        hvd = self._hvd
        compression = hvd.Compression.fp16 if compression_fp16 else hvd.Compression.none
        dense = [_dense(gradient) for gradient in gradients]
        if overlap:
            # Allreduce: one per tensor; in a tf.function each starts when the backward pass has produced its
            # tensor, and Horovod's background cycle fuses those that are ready together.
            return [
                hvd.allreduce(gradient, op=hvd.Average, compression=compression, name=f"gradient_{index}")
                for index, gradient in enumerate(dense)
            ]
        # Allreduce: each rank saw a different slice of the global batch; one grouped call fuses all tensors.
        return list(hvd.grouped_allreduce(dense, op=hvd.Average, compression=compression, name="gradients"))

    def sum(self, tensor: tf.Tensor) -> tf.Tensor:
        if self.size == 1:  # as in average_gradients: a per-step collective that has nothing to add up
            return super().sum(tensor)
        # Allreduce: a global count (e.g. target tokens) that weights every rank's share of the loss.
        return self._hvd.allreduce(tf.convert_to_tensor(tensor), op=self._hvd.Sum, name="sum")

    def minimum(self, value: int) -> int:
        # Allreduce: every rank must run the same number of steps, else the next collective hangs.
        result = self._hvd.allreduce(
            tf.constant(int(value), dtype=tf.int64), op=self._hvd.Min, name="minimum"
        )
        return int(result.numpy())

    def average(self, value: float | Mapping[str, float]) -> float | dict[str, float]:
        names, packed = _pack(value)
        # Allreduce: metrics measured on each rank's shard; every rank calls it even if only rank 0 logs.
        return _unpack(names, self._hvd.allreduce(packed, op=self._hvd.Average, name="average"))

    def broadcast_variables(self, variables: Sequence[Any]) -> None:
        # Broadcast: ranks must start from the chief's weights (random init or a resumed checkpoint).
        self._hvd.broadcast_variables([_backend_variable(variable) for variable in variables], root_rank=0)

    def broadcast_object(self, value: Any) -> Any:
        # Broadcast: decisions taken on the chief (resume state, wall-clock stop) must hold on every rank.
        return self._hvd.broadcast_object(value, root_rank=0, name="object")

    def allgather_object(self, value: Any) -> list[Any]:
        # Allgather: per-rank partial sums of an epoch go into the chief's checkpoint.
        return list(self._hvd.allgather_object(value, name="objects"))

    def maximum(self, values: Sequence[float]) -> list[float]:
        packed = tf.constant([float(value) for value in values], dtype=tf.float64)
        # Allreduce: a stop request on any rank and the chief's checkpoint decision hold on every rank.
        return [
            float(value) for value in self._hvd.allreduce(packed, op=self._hvd.Max, name="control").numpy()
        ]

    def is_peer_failure(self, error: BaseException) -> bool:
        # A rank that dies (killed, OOM, lost node) shuts Horovod down on every other rank: its next
        # collective raises "Horovod has been shut down", or, caught inside Gloo's transfer, the socket's own
        # error (both seen with a SIGKILLed rank, the second across two hosts).
        return type(error).__name__ == "HorovodInternalError" or any(
            message in str(error) for message in PEER_FAILURE_MESSAGES
        )

    def barrier(self) -> None:
        # Allreduce: horovod.tensorflow has no barrier; a tiny allreduce completes only when all ranks join.
        self._hvd.allreduce(tf.constant(0, dtype=tf.int32), op=self._hvd.Sum, name="barrier").numpy()

    def start_timeline(self, path: str | os.PathLike[str], mark_cycles: bool = False) -> None:
        """Needs ``init(dynamic_timeline=True)`` (HOROVOD_TIMELINE=DYNAMIC); rank 0 writes the file."""
        self._hvd.start_timeline(os.fspath(path), mark_cycles=mark_cycles)

    def stop_timeline(self) -> None:
        self._hvd.stop_timeline()


def launched_by_horovodrun(environment: Mapping[str, str] | None = None) -> bool:
    environment = os.environ if environment is None else environment
    return any(name in environment for name in LAUNCHER_VARIABLES)


def horovod_environment(config: HorovodConfig, gpus: bool) -> dict[str, str]:
    """The HOROVOD_* variables of ``config`` (``gpus``: the ranks train on GPUs, for ``cycle_time_ms: auto``).

    The same variables ``horovodrun --fusion-threshold-mb / --cycle-time-ms`` would set; :func:`init` sets
    them itself, so params.yaml is their one source under any launcher (horovodrun, mpirun, an MPIJob).
    """
    return {
        "HOROVOD_FUSION_THRESHOLD": str(config.fusion_threshold_mb * 1024 * 1024),
        "HOROVOD_CYCLE_TIME": f"{config.cycle_time_for(gpus):g}",
    }


def init(dynamic_timeline: bool = False, horovod: HorovodConfig | None = None) -> Distribution:
    """Start Horovod when launched by ``horovodrun`` (else one local process) and pin this process's GPU.

    Call it first, before any TensorFlow op runs: CPU thread counts can only be set before.

    Args:
        dynamic_timeline: allow :meth:`Distribution.start_timeline` (sets ``HOROVOD_TIMELINE=DYNAMIC``
            unless the launcher already chose a timeline file).
        horovod: ``train.horovod`` (default: its defaults); its fusion threshold and cycle time replace
            whatever the launcher set.
    """
    if not launched_by_horovodrun():
        distribution: Distribution = LocalDistribution()
    else:
        if dynamic_timeline:
            os.environ.setdefault("HOROVOD_TIMELINE", "DYNAMIC")
        config = horovod or HorovodConfig()
        gpus = bool(tf.config.list_physical_devices("GPU"))
        os.environ.update(horovod_environment(config, gpus))  # read by hvd.init()
        import horovod.tensorflow as hvd

        hvd.init()
        distribution = HorovodDistribution(hvd)
        distribution.cycle_time_ms = config.cycle_time_for(gpus)
    distribution.pin_gpu()
    return distribution


@dataclass(frozen=True)
class HorovodBuild:
    """What Horovod was compiled with, as ``horovodrun --check-build`` lists it."""

    version: str
    controllers: tuple[str, ...]  # of MPI, Gloo
    tensor_operations: tuple[str, ...]  # of NCCL, DDL, CCL, MPI, Gloo
    nccl_version: str | None  # e.g. "2.27.7" when built with NCCL
    cuda: bool  # GPU operations compiled against CUDA


def _nccl_version(code: int) -> str | None:
    """NCCL_VERSION_CODE as a version: X*10000 + Y*100 + Z since NCCL 2.9, X*1000 + Y*100 + Z before."""
    if not code:
        return None
    major, rest = divmod(code, 10000) if code >= 10000 else divmod(code, 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def horovod_build() -> HorovodBuild:
    """Horovod's build, read from its TensorFlow extension without starting Horovod (no ``hvd.init()``).

    Raises:
        ImportError: Horovod is not installed, or its TensorFlow extension does not load (the message says
            why: e.g. a missing MPI library, or a TensorFlow other than the one it was built against).
    """
    try:
        import horovod
        import horovod.tensorflow as hvd
    except (OSError, tf.errors.NotFoundError) as error:  # ctypes or tf.load_op_library of the extension
        raise ImportError(f"Horovod's TensorFlow extension does not load: {error}") from error
    controllers = (("MPI", hvd.mpi_built()), ("Gloo", hvd.gloo_built()))
    operations = (
        ("NCCL", hvd.nccl_built()),
        ("DDL", hvd.ddl_built()),
        ("CCL", hvd.ccl_built()),
        ("MPI", hvd.mpi_built()),
        ("Gloo", hvd.gloo_built()),
    )
    return HorovodBuild(
        version=horovod.__version__,
        controllers=tuple(name for name, built in controllers if built),
        tensor_operations=tuple(name for name, built in operations if built),
        nccl_version=_nccl_version(int(hvd.nccl_built())),
        cuda=bool(hvd.cuda_built()),
    )


__all__ = [
    "Distribution",
    "HorovodBuild",
    "HorovodDistribution",
    "LocalDistribution",
    "gpu_for_local_rank",
    "horovod_build",
    "horovod_environment",
    "init",
    "launched_by_horovodrun",
]

"""Library start-up noise, off by default: the one place that knows which setting silences which line.

Without it every stage and ``summarize`` print TensorFlow's C++ start-up lines, MLflow's INFO lines and
progress bars and rouge-score's absl INFO line, around our own log lines. :func:`configure` must run before
TensorFlow or MLflow is imported (TensorFlow reads its log level when its library loads), so the stage entry
points (``pipeline/stage.py``) call it at import and the console scripts before their lazy imports.

What prints, and what silences it (measured with TensorFlow 2.21, MLflow 3, rouge-score 0.1.2):

- ``cpu_feature_guard.cc ... This TensorFlow binary is optimized ...`` (INFO),
  ``tf_record_dataset_op.cc ... buffer_size is unspecified`` (INFO), ``oneDNN supports DT_BOOL only on
  platforms with AVX-512`` (ERROR level, hence ``TF_CPP_MIN_LOG_LEVEL=2`` keeps it):
  ``TF_CPP_MIN_LOG_LEVEL=3``. TensorFlow's real errors still reach Python as exceptions, which print.
- ``oneDNN custom operations are on ...`` (``port.cc``, where oneDNN is on: CPUs with AVX-512) and absl's
  ``WARNING: All log messages before absl::InitializeLog() is called are written to STDERR``: logged while
  TensorFlow's library loads, before it reads any log level, so no variable silences them (short of
  ``TF_ENABLE_ONEDNN_OPTS=0``, which changes the kernels). The import of ``tensorflow`` runs with file
  descriptor 2 captured; afterwards these lines are dropped and every other captured line is written out.
- ``INFO mlflow.store.db.utils: Creating initial MLflow database tables...``, ``INFO mlflow.pyfunc: Validating
  input example ...``: ``MLFLOW_LOGGING_LEVEL=WARNING`` (MLflow's warnings still print).
- ``Downloading artifacts: 100%|...`` (tqdm): ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``.
- ``<stage>: Using default tokenizer.`` (rouge-score through absl's Python logger into our root handler): the
  ``absl`` logger at WARNING.

``--verbose`` (or ``SUMMARIZER_VERBOSE=1``, which reaches the ``horovodrun`` ranks, and which ``--verbose``
exports to child processes) changes nothing: the libraries' own defaults and your environment apply.
``python -m summarizer.quiet COMMAND ...`` runs COMMAND (``horovodrun`` in ``dvc.yaml``) with the same
environment, so that the launcher's own TensorFlow import is quiet too.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import tempfile
import types
from collections.abc import Mapping, Sequence

VERBOSE_FLAG = "--verbose"
VERBOSE_VARIABLE = "SUMMARIZER_VERBOSE"
VERBOSE_HELP = (
    "also print the libraries' start-up and INFO lines (TensorFlow, MLflow, absl); SUMMARIZER_VERBOSE=1 "
    "does the same, for `dvc repro` and the horovodrun ranks too"
)

QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
QUIET_LOGGERS = {"absl": logging.WARNING, "mlflow": logging.WARNING}
# Lines TensorFlow's library writes while it loads, before any log level applies (see the module docstring).
IMPORT_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
)


def verbose_requested(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``argv`` holds ``--verbose`` or the environment sets ``SUMMARIZER_VERBOSE`` (not 0/empty)."""
    environ = os.environ if environ is None else environ
    return VERBOSE_FLAG in argv or environ.get(VERBOSE_VARIABLE, "") not in ("", "0")


def configure(verbose: bool) -> None:
    """Silence the libraries' start-up noise (or, when ``verbose``, pass ``SUMMARIZER_VERBOSE=1`` on).

    Sets :data:`QUIET_ENVIRONMENT` (over the caller's values: ``TF_CPP_MIN_LOG_LEVEL=2`` alone leaves lines
    the user never asked for), the :data:`QUIET_LOGGERS` levels, and quiets the first import of TensorFlow.
    """
    if verbose:
        os.environ[VERBOSE_VARIABLE] = "1"
        return
    os.environ.update(QUIET_ENVIRONMENT)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once and wraps its loader so that its import runs with stderr captured."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201 (the finder protocol)
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> object:  # is_package, get_resource_reader...: TF's own
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        with tempfile.TemporaryFile() as captured:
            sys.stderr.flush()
            original = os.dup(2)
            os.dup2(captured.fileno(), 2)
            failed = True
            try:
                self.loader.exec_module(module)
                failed = False
            finally:
                sys.stderr.flush()
                os.dup2(original, 2)
                os.close(original)
                captured.seek(0)
                _write_kept(captured.read().decode("utf-8", "replace"), keep_all=failed)


def _write_kept(text: str, keep_all: bool) -> None:
    """Write ``text`` to stderr without the :data:`IMPORT_NOISE` lines (all of it when the import failed)."""
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if keep_all or not any(noise in line for noise in IMPORT_NOISE)]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m summarizer.quiet COMMAND ...``: exec COMMAND with the quiet (or verbose) environment."""
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: python -m summarizer.quiet COMMAND [ARGUMENTS...]", file=sys.stderr)
        return 2
    configure(verbose_requested((), os.environ))  # COMMAND's own --verbose (horovodrun has one) is its own
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

"""The one shape of every stage entry point: parse, log, load the params, run one library function, report.

Each ``pipeline/<stage>.py`` defines ``PROGRAM``, ``build_parser()`` (paths matching ``dvc.yaml``),
``run(arguments, params)`` calling its library function (which writes its outputs atomically), and
``main(argv)`` = :func:`main`. Exit status: 0 done; :data:`CONFIG_ERROR` the params file is wrong (nothing
read or written); :data:`INPUT_ERROR` an input or the work failed (its outputs left as they were).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from summarizer import quiet
from summarizer.config import ConfigError, Params, load_params

CONFIG_ERROR = 2
INPUT_ERROR = 1

# Before the stage module imports TensorFlow and MLflow (which read their log levels as they load): every
# entry point imports this module first. --verbose is read from argv here, and parsed again below.
quiet.configure(quiet.verbose_requested(sys.argv[1:]))


def build_parser(program: str, description: str) -> argparse.ArgumentParser:
    """A parser with ``--params``; the stage adds its input and output paths."""
    parser = argparse.ArgumentParser(
        prog=f"python -m pipeline.{program}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument(quiet.VERBOSE_FLAG, action="store_true", help=quiet.VERBOSE_HELP)
    return parser


def add_root_argument(parser: argparse.ArgumentParser) -> None:
    """``--root``: the repository root, for stages that keep state there or log to a relative sqlite URI."""
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="repository root: holds .checkpoints/ and anchors a relative sqlite tracking URI "
        "(default: $DVC_ROOT, else the current directory)",
    )


def start_logging(program: str) -> logging.Logger:
    """INFO lines on stderr, each prefixed with the stage name (DVC shows them as the stage runs)."""
    logging.basicConfig(level=logging.INFO, format=f"{program}: %(message)s", stream=sys.stderr)
    return logging.getLogger(program)


def fail(program: str, message: str, status: int) -> int:
    """Print ``<program>: error: <message>`` on stderr and return the exit status."""
    print(f"{program}: error: {message}", file=sys.stderr)
    return status


def main(
    program: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace, Params], Any],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, load and validate the params before any work, then ``run``; returns the exit status."""
    arguments = parser.parse_args(argv)
    start_logging(program)
    try:
        params = load_params(arguments.params)
    except ConfigError as error:
        return fail(program, str(error), CONFIG_ERROR)
    try:
        run(arguments, params)
    except (FileNotFoundError, ValueError) as error:
        return fail(program, str(error), INPUT_ERROR)
    return 0

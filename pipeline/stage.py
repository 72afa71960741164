"""What every stage entry point shares: its log format and how it reports a failure."""

from __future__ import annotations

import logging
import sys

CONFIG_ERROR = 2  # the params file is wrong: nothing was read or written
INPUT_ERROR = 1  # the stage's input or work failed: its outputs were left as they were


def start_logging(program: str) -> logging.Logger:
    """INFO lines on stderr, each prefixed with the stage name (DVC shows them as the stage runs)."""
    logging.basicConfig(level=logging.INFO, format=f"{program}: %(message)s", stream=sys.stderr)
    return logging.getLogger(program)


def fail(program: str, message: str, status: int) -> int:
    """Print ``<program>: error: <message>`` on stderr and return the exit status."""
    print(f"{program}: error: {message}", file=sys.stderr)
    return status

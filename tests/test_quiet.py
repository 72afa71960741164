"""summarizer.quiet: which lines it drops, when --verbose applies, and the launcher's environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from summarizer import quiet

PRINT_ENVIRONMENT = (
    "import os; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), os.environ.get('MLFLOW_LOGGING_LEVEL'))"
)


def launch(*command: str, **variables: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **variables}
    for name in ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_LOGGING_LEVEL", "SUMMARIZER_VERBOSE"):
        if name not in variables:
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "summarizer.quiet", *command],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "variable", "expected"),
    [
        ([], None, False),
        (["--params", "p.yaml", "--verbose"], None, True),
        ([], "1", True),
        ([], "0", False),
        ([], "", False),
    ],
)
def test_verbose_from_the_flag_or_the_variable(argv: list[str], variable: str | None, expected: bool) -> None:
    environ = {} if variable is None else {quiet.VERBOSE_VARIABLE: variable}
    assert quiet.verbose_requested(argv, environ) is expected


def test_only_the_load_time_noise_lines_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    captured = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796020661.781961    2618 port.cc:153] oneDNN custom operations are on. ...\n"
        "F0000 something fatal\n"
        "Traceback (most recent call last):\n"
    )
    quiet._write_kept(captured, keep_all=False)
    assert capsys.readouterr().err == "F0000 something fatal\nTraceback (most recent call last):\n"

    quiet._write_kept(captured, keep_all=True)  # the import failed: everything, to explain why
    assert capsys.readouterr().err == captured


def test_launcher_runs_the_command_with_the_quiet_environment() -> None:
    result = launch(sys.executable, "-c", PRINT_ENVIRONMENT, TF_CPP_MIN_LOG_LEVEL="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3 WARNING\n"  # over the caller's 1: it alone leaves lines nobody asked for


def test_launcher_leaves_the_environment_alone_when_verbose() -> None:
    result = launch(sys.executable, "-c", PRINT_ENVIRONMENT, TF_CPP_MIN_LOG_LEVEL="1", SUMMARIZER_VERBOSE="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 None\n"


def test_launcher_passes_the_exit_status_on_and_needs_a_command() -> None:
    assert launch(sys.executable, "-c", "raise SystemExit(7)").returncode == 7
    assert launch().returncode == 2

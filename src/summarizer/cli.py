"""Console scripts: ``summarize`` (new texts), ``summarizer-compare`` (runs), ``summarizer-replay`` and
``summarizer`` (subcommands: ``doctor``, in :mod:`summarizer.doctor`; ``results``, in
:mod:`summarizer.results`).

``summarize`` and ``summarizer`` take ``--verbose``; without it :func:`summarizer.quiet.configure` silences
the libraries' start-up lines before TensorFlow is imported (the imports that load it are lazy).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from mlflow.exceptions import MlflowException

from summarizer import quiet
from summarizer.config import ConfigError, EvaluateConfig, Params, TrackingConfig, load_params
from summarizer.progress import format_duration
from summarizer.tracking import (
    RunRecord,
    TrackingError,
    check_tracking_store,
    list_runs,
    project_root,
    resolve_tracking_uri,
    sqlite_path,
)

STDIN_NAME = "-"
DECODING_OPTIONS = (
    "search",
    "beam_width",
    "length_penalty",
    "min_length",
    "max_length",
    "no_repeat_ngram_size",
    "batch_size",
)


# summarize -------------------------------------------------------------------------------------------


def summarize_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="summarize",
        description="Summarize texts with a trained summarizer. By default each FILE is one text (its "
        "paragraphs joined); with --one-per-line every non-empty line is a text. With no FILE, or FILE '-', "
        "stdin is read. One summary per text is printed, one per line, in input order.",
        epilog="Examples: echo 'GNU Emacs is an extensible, customizable text editor ...' | "
        "summarize --model models/summarizer --search greedy; "
        "summarize --model models:/summarizer@champion notes.txt",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="input text files ('-' for stdin)")
    parser.add_argument(
        "--model",
        "--model-dir",
        dest="model",
        default="models/summarizer",
        help="a trained model directory (model.keras, spm.model, config.json from the train stage), or an "
        "MLflow model URI: models:/summarizer@champion (alias), models:/summarizer/3 (version), "
        "runs:/<run_id>/summarizer. A URI is looked up in the tracking store named by MLFLOW_TRACKING_URI, "
        "else by tracking.tracking_uri of --params (else of ./params.yaml, else sqlite:///mlflow.db); it "
        "decodes with the settings it was logged with unless --params or the options below say otherwise",
    )
    parser.add_argument("--one-per-line", action="store_true", help="each non-empty input line is one text")
    parser.add_argument(
        "--params",
        default=None,
        help="take decoding defaults from this params file's `evaluate` section (else the built-in "
        "defaults); the options below override them",
    )
    decoding = parser.add_argument_group("decoding (default: --params, else the evaluate defaults)")
    decoding.add_argument("--search", choices=("greedy", "beam"), default=None, help="search algorithm")
    decoding.add_argument("--beam-width", type=int, default=None, help="beams kept per text (beam search)")
    decoding.add_argument(
        "--length-penalty", type=float, default=None, help="GNMT length penalty alpha (beam)"
    )
    decoding.add_argument("--min-length", type=int, default=None, help="minimum summary tokens (>= 1)")
    decoding.add_argument("--max-length", type=int, default=None, help="maximum summary tokens, EOS included")
    decoding.add_argument(
        "--no-repeat-ngram-size", type=int, default=None, help="ban repeated n-grams (0: off)"
    )
    decoding.add_argument("--batch-size", type=int, default=None, help="texts decoded together")
    parser.add_argument(quiet.VERBOSE_FLAG, action="store_true", help=quiet.VERBOSE_HELP)
    return parser


def decoding_settings(arguments: argparse.Namespace, base: EvaluateConfig | None = None) -> EvaluateConfig:
    """The ``evaluate`` settings of ``--params`` (else ``base``, else the defaults), overrides applied.

    Raises:
        ConfigError: the params file is invalid or an override is out of range (naming ``evaluate.<key>``).
    """
    if arguments.params:
        base = load_params(arguments.params).evaluate
    base = base or EvaluateConfig()
    overrides = {
        name: getattr(arguments, name) for name in DECODING_OPTIONS if getattr(arguments, name) is not None
    }
    settings = dataclasses.replace(base, **overrides)
    settings.validate("evaluate")
    return settings


def _read_source(name: str, stdin: TextIO) -> str:
    if name == STDIN_NAME:
        return stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such input file") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{name}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_texts(files: Sequence[str], one_per_line: bool, stdin: TextIO) -> list[str]:
    """The texts to summarize.

    Raises:
        FileNotFoundError: an input file is missing. ValueError: a file (or stdin) holds no text.
    """
    texts = []
    for name in files or [STDIN_NAME]:
        content = _read_source(name, stdin)
        label = "stdin" if name == STDIN_NAME else name
        if one_per_line:
            texts.extend(line for line in content.splitlines() if line.strip())
        elif content.strip():
            texts.append(content)
        else:
            raise ValueError(f"{label}: empty; nothing to summarize")
    if not texts:
        raise ValueError("no text to summarize: the input has only blank lines")
    return texts


def model_tracking_uri(params_path: str | None) -> str:
    """The store a model URI is looked up in: ``MLFLOW_TRACKING_URI``, else the params' ``tracking_uri``.

    Raises:
        ConfigError: the params file is invalid. TrackingError: the URI is not usable (names the setting).
    """
    path = Path(params_path or "params.yaml")
    config = load_params(path).tracking if params_path or path.is_file() else TrackingConfig()
    return resolve_tracking_uri(config, project_root())


def resolve_model(
    arguments: argparse.Namespace, settings: EvaluateConfig, scratch: Path
) -> tuple[Path, EvaluateConfig]:
    """The model directory of ``--model`` and the decoding settings to use with it.

    A model URI is downloaded into ``scratch``; unless ``--params`` is given, its logged decoding settings
    are the base the command-line options override.

    Raises:
        ModelDirectoryError: not a model directory. ValueError: the URI names no model in the store (the
            message names the URI and the store), or the store is unreachable (TrackingError).
    """
    from summarizer.inference import decoding_config
    from summarizer.model_directory import check_model_directory
    from summarizer.pyfunc import download_model_directory, is_model_uri

    if not is_model_uri(arguments.model):
        return check_model_directory(arguments.model), settings
    uri = model_tracking_uri(arguments.params)
    check_tracking_store(uri)  # one short attempt: a store that is down fails now, not after retries
    try:
        model_dir, logged = download_model_directory(arguments.model, uri, scratch)
    except MlflowException as error:
        reason = str(error.message).strip().splitlines()[0] if str(error.message).strip() else str(error)
        raise ValueError(f"cannot load {arguments.model} from the MLflow store {uri}: {reason}") from None
    if not arguments.params:
        settings = decoding_settings(arguments, base=decoding_config(logged))
    return model_dir, settings


def summarize_main(
    argv: Sequence[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    """The ``summarize`` console script; returns the exit status (2: usage or settings, 1: input or model)."""
    parser = summarize_parser()
    arguments = parser.parse_args(argv)
    quiet.configure(arguments.verbose or quiet.verbose_requested(()))
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        settings = decoding_settings(arguments)
    except ConfigError as error:
        parser.error(f"decoding settings: {error}")
    # Imported here so that --help and settings errors answer without loading TensorFlow.
    from summarizer.inference import SummarizerPipeline
    from summarizer.model_directory import ModelDirectoryError
    from summarizer.reproducibility import make_deterministic

    make_deterministic()
    try:
        with tempfile.TemporaryDirectory(prefix="summarize-") as scratch:
            model_dir, settings = resolve_model(arguments, settings, Path(scratch))
            texts = read_texts(arguments.files, arguments.one_per_line, stdin)
            summaries = SummarizerPipeline.load(model_dir, settings).summarize(texts)
    except ConfigError as error:
        print(f"summarize: error: {error}", file=sys.stderr)
        return 2
    except (ModelDirectoryError, FileNotFoundError, ValueError) as error:
        print(f"summarize: error: {error}", file=sys.stderr)
        return 1
    for summary in summaries:
        stdout.write(" ".join(summary.split()) + "\n")
    stdout.flush()
    return 0


# summarizer-compare ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Column:
    title: str
    value: Callable[[RunRecord], Any]
    text: Callable[[Any], str] = str


def _metric(name: str) -> Callable[[RunRecord], float | None]:
    return lambda run: run.metrics.get(name)


def _number(digits: int) -> Callable[[Any], str]:
    return lambda value: "" if value is None else f"{value:.{digits}f}"


def _workers(run: RunRecord) -> int | None:
    value = run.metrics.get("workers", run.tags.get("workers", run.params.get("train.workers")))
    return None if value in (None, "") else int(float(value))


def _wall_seconds(run: RunRecord) -> float | None:
    if "wall_seconds" in run.metrics:
        return run.metrics["wall_seconds"]
    return (run.end_time - run.start_time) / 1000 if run.end_time else None


def _best_lead(run: RunRecord) -> str:
    score, words = run.metrics.get("test_lead_rougeL"), run.metrics.get("test_lead_best_words")
    if score is None:
        return ""
    return f"{score:.2f} ({int(words)}w)" if words is not None else f"{score:.2f}"


COLUMNS = (
    Column("run", lambda run: run.run_name),
    Column("cell", lambda run: run.params.get("train.cell", "")),
    Column("precision", lambda run: run.params.get("train.precision", "")),
    Column("workers", _workers, lambda value: "" if value is None else str(value)),
    Column("ROUGE-1", _metric("test_rouge1"), _number(2)),
    Column("ROUGE-2", _metric("test_rouge2"), _number(2)),
    Column("ROUGE-L", _metric("test_rougeL"), _number(2)),
    Column("best lead ROUGE-L", _best_lead),
    Column("perplexity", _metric("test_perplexity"), _number(2)),
    Column("samples/s", _metric("samples_per_second"), _number(1)),
    Column("wall time", _wall_seconds, format_duration),
    Column("status", lambda run: run.status),
)


def ranked(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """Evaluated runs by test ROUGE-L, best first; then the others, newest first."""
    evaluated = [run for run in runs if run.metrics.get("test_rougeL") is not None]
    others = [run for run in runs if run.metrics.get("test_rougeL") is None]
    return sorted(evaluated, key=lambda run: -run.metrics["test_rougeL"]) + sorted(
        others, key=lambda run: -run.start_time
    )


def _cells(runs: Sequence[RunRecord]) -> list[list[str]]:
    return [[column.text(column.value(run)) for column in COLUMNS] for run in runs]


def format_table(runs: Sequence[RunRecord]) -> str:
    rows = [[column.title for column in COLUMNS], *_cells(runs)]
    widths = [max(len(row[index]) for row in rows) for index in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]]) + "\n"


def format_markdown(runs: Sequence[RunRecord]) -> str:
    rows = [[column.title for column in COLUMNS], ["---"] * len(COLUMNS), *_cells(runs)]
    return "".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |\n" for row in rows)


def format_csv(runs: Sequence[RunRecord]) -> str:
    """Raw values (full precision, seconds), one run a row, with the run id first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run_id", *(column.title for column in COLUMNS)])
    for run in runs:
        values = [column.value(run) for column in COLUMNS]
        writer.writerow([run.run_id, *("" if value is None else value for value in values)])
    return buffer.getvalue()


FORMATTERS: Mapping[str, Callable[[Sequence[RunRecord]], str]] = {
    "table": format_table,
    "markdown": format_markdown,
    "csv": format_csv,
}


def compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="summarizer-compare",
        description="Line up the MLflow runs of the summarizer experiment: configuration, test ROUGE, the "
        "best lead baseline, perplexity, training throughput and wall time; evaluated runs first, best "
        "ROUGE-L first.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="params file whose `tracking` section names the store and experiment (defaults if it is absent)",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI, --params)"
    )
    parser.add_argument("--experiment", default=None, help="experiment name (default: from --params)")
    parser.add_argument("--format", choices=tuple(FORMATTERS), default="table", help="output format")
    parser.add_argument("--limit", type=int, default=0, help="show at most this many runs (0: all)")
    return parser


def _tracking_config(arguments: argparse.Namespace) -> TrackingConfig:
    params = load_params(arguments.params) if Path(arguments.params).is_file() else Params()
    config = params.tracking
    if arguments.experiment:
        config = dataclasses.replace(config, experiment=arguments.experiment)
    return config


def _existing_store(uri: str) -> str:
    """``uri``, unless it names a sqlite file that does not exist (MLflow would create an empty one)."""
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise TrackingError(f"no MLflow store at {uri}: {database} does not exist (run the pipeline first)")
    return uri


def compare_main(argv: Sequence[str] | None = None, stdout: TextIO | None = None) -> int:
    """The ``summarizer-compare`` console script; returns the exit status."""
    parser = compare_parser()
    arguments = parser.parse_args(argv)
    stdout = stdout or sys.stdout
    if arguments.limit < 0:
        parser.error(f"--limit: expected an integer >= 0, got {arguments.limit}")
    try:
        config = _tracking_config(arguments)
        uri = arguments.tracking_uri or resolve_tracking_uri(config, project_root())
        runs = ranked(list_runs(_existing_store(uri), config.experiment))
    except ConfigError as error:
        parser.error(str(error))
    except TrackingError as error:
        print(f"summarizer-compare: error: {error}", file=sys.stderr)
        return 1
    stdout.write(FORMATTERS[arguments.format](runs[: arguments.limit or None]))
    return 0


# summarizer ------------------------------------------------------------------------------------------


def summarizer_parser() -> argparse.ArgumentParser:
    from summarizer import doctor, results  # light: doctor imports TensorFlow and Horovod only when it runs

    parser = argparse.ArgumentParser(prog="summarizer", description="The summarizer project's commands.")
    parser.add_argument(quiet.VERBOSE_FLAG, action="store_true", help=quiet.VERBOSE_HELP)
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    doctor.configure_parser(
        commands.add_parser(
            "doctor",
            help="check this machine or cluster node and say how to fix it",
            description=doctor.DESCRIPTION,
        )
    )
    results.configure_parser(
        commands.add_parser(
            "results",
            help="the last pipeline run at a glance: ROUGE and perplexity vs the best lead, epochs, "
            "samples/s, stage times, the registry decision",
            description=results.DESCRIPTION,
        )
    )
    return parser


def summarizer_main(argv: Sequence[str] | None = None) -> int:
    """The ``summarizer`` console script: ``summarizer COMMAND [options]``; returns the exit status."""
    arguments = summarizer_parser().parse_args(argv)
    quiet.configure(arguments.verbose or quiet.verbose_requested(()))
    return arguments.handler(arguments)


__all__ = [
    "compare_main",
    "format_csv",
    "format_markdown",
    "format_table",
    "ranked",
    "read_texts",
    "summarize_main",
    "summarizer_main",
]


def replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="summarizer-replay",
        description="Send the MLflow records a stage spooled while the tracking store was unreachable "
        "(params, per-epoch metrics with their steps and timestamps, tags, artifacts, the model, the final "
        "status) into their runs, in order. The evaluate stage does this by itself when it starts.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="repository root holding .checkpoints/mlflow-spool/ (default: $DVC_ROOT, else the current "
        "directory)",
    )
    return parser


def replay_main(argv: Sequence[str] | None = None, stdout: TextIO | None = None) -> int:
    """Exit 0 when every spool was replayed, 1 when records are still pending or the store refused one."""
    from summarizer.spool import SPOOL_DIRECTORY, replay  # MLflow only, no TensorFlow until a model is sent

    arguments = replay_parser().parse_args(argv)
    stdout = stdout or sys.stdout
    root = arguments.root or project_root()
    try:
        remaining = replay(root)
    except (TrackingError, MlflowException) as error:
        print(f"summarizer-replay: error: {error}", file=sys.stderr)
        return 1
    if not remaining:
        print(f"nothing to replay: no spool under {root / SPOOL_DIRECTORY}", file=stdout)
    for run_id, pending in remaining.items():
        state = "replayed" if pending == 0 else f"{pending} record(s) still pending (store unreachable)"
        print(f"run {run_id}: {state}", file=stdout)
    return 0 if not any(remaining.values()) else 1

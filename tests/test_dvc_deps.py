"""dvc.yaml's code deps are facts about imports: each stage lists exactly its module's import closure.

The closure follows ``import`` and ``from ... import`` statements (not those under ``if TYPE_CHECKING:``,
which never run) through ``pipeline/`` and ``src/summarizer/``, package ``__init__.py`` files included. A
module that a stage imports but does not list would not rerun the stage when it changes; one listed but not
imported reruns it for nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

ROOTS = {"summarizer": REPO_ROOT / "src", "pipeline": REPO_ROOT}
STAGES = ("ingest", "tokenize", "train", "evaluate")


def module_file(name: str) -> Path | None:
    """The file of a project module (``summarizer.x`` or ``pipeline.x``), None for anything else."""
    top = name.split(".")[0]
    if top not in ROOTS:
        return None
    base = ROOTS[top].joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.AST) -> set[str]:
    """Dotted names a module imports at run time, with their parent packages."""
    names: set[str] = set()
    pending = list(ast.iter_child_nodes(tree))
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    with_parents = set()
    for name in names:
        parts = name.split(".")
        with_parents.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return with_parents


def import_closure(module: str) -> set[str]:
    """Repository-relative paths of the project files ``module`` runs when imported."""
    seen: set[Path] = set()
    parts = module.split(".")
    pending = [".".join(parts[:end]) for end in range(1, len(parts) + 1)]  # the module and its packages
    while pending:
        path = module_file(pending.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        pending.extend(imported_modules(ast.parse(path.read_text(encoding="utf-8"))))
    return {str(path.relative_to(REPO_ROOT)) for path in seen}


def declared_code_deps(stage: str) -> set[str]:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    deps = dvc["stages"][stage]["deps"]
    return {dep for dep in deps if dep.endswith(".py")}


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_lists_exactly_the_import_closure_of_each_stage(stage: str) -> None:
    closure = import_closure(f"pipeline.{stage}")
    declared = declared_code_deps(stage)
    missing, extra = sorted(closure - declared), sorted(declared - closure)
    assert declared == closure, f"dvc.yaml stage {stage!r}: missing {missing}, not imported {extra}"


def test_the_closure_follows_from_imports_and_skips_type_checking_blocks() -> None:
    closure = import_closure("pipeline.train")
    assert "src/summarizer/distribution.py" in closure and "src/summarizer/tokenization.py" in closure
    assert "src/summarizer/__init__.py" in closure and "pipeline/__init__.py" in closure
    assert "src/summarizer/progress.py" in import_closure("summarizer.cli")
    # progress imports training only for type checking: the console scripts do not load TensorFlow
    assert "src/summarizer/training.py" not in import_closure("summarizer.progress")
    assert "src/summarizer/evaluation.py" not in closure


@pytest.mark.parametrize("module", ["summarizer.model", "summarizer.decoding", "summarizer.losses"])
def test_model_code_never_reaches_horovod_or_mlflow(module: str) -> None:
    closure = import_closure(module)
    assert not closure & {"src/summarizer/distribution.py", "src/summarizer/tracking.py"}, closure


def test_only_the_distribution_module_imports_horovod() -> None:
    importers = {
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "src").rglob("*.py")
        if any(name.split(".")[0] == "horovod" for name in imported_modules(ast.parse(path.read_text())))
    }
    assert importers == {"src/summarizer/distribution.py"}

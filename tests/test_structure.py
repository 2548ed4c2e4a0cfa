"""The package's shape: layers that only import downwards, no import circle, modules of one concern.

Imports are read from the source (every ``import``, at the top or inside a function), so a lazy
import that breaks the layering is caught too. Two kinds are exempt: ``scoring.registry`` names
implementations as strings and loads them on use (that is its job), and the package itself
(``scoring/__init__.py`` loads ``run``/``predict`` on first use; a module reading
``scoring.__version__`` or ``scoring.__file__`` depends on nothing the package does not already
run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "scoring"

# Lowest first. A module may import its own layer's modules and any lower layer's, never a higher
# one's. docs/architecture.md draws the same layers.
LAYERS: list[tuple[str, ...]] = [
    # Plain data and helpers every layer reads.
    (
        "registry",
        "errors",
        "record",
        "redact",
        "shard",
        "threads",
        "store_options",
        "storage",
        "fence",
        "jobrecord",
    ),
    # What a user asked for, and the small rules around a run.
    ("config", "config_file", "stopping", "outcome", "listing", "functions"),
    # The model and where it runs.
    ("model", "exported", "session", "tensors", "constants", "inspection", "raw", "pool", "cluster"),
    # The seams: formats, preprocessors, postprocessors, outputs; batches through ONNX Runtime.
    ("formats", "preprocess", "postprocess", "outputs", "inference", "scorer", "plan"),
    # One job: its spec, its folder, a worker's shard loop, what it shows.
    ("spec", "folder", "worker", "progress", "report", "page", "charts"),
    # Running a job: runners, the driver loop, the record, the checks before.
    ("runners", "driver", "summary", "validate"),
    # Entry points.
    ("job", "api", "demo", "submit", "cli", "__main__"),
]
MAX_LINES = 350


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The scoring modules ``name`` imports (``scoring.x.y`` -> ``x.y``), the package excluded."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = ["scoring", *package.split(".")] if package else ["scoring"]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]
            targets = [t if t.removeprefix("scoring.") in modules else base for t in targets]
        else:
            continue
        for target in targets:
            if target.startswith("scoring."):
                out.add(target.removeprefix("scoring."))
    out.discard(name)
    return out


def _layer(name: str) -> int:
    top = name.split(".")[0]
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"scoring.{name} is in no layer of tests/test_structure.py: add it to one")


MODULES = _modules()
GRAPH = {name: _imports(name, path, MODULES) for name, path in MODULES.items()}


def test_every_module_is_in_a_layer_and_imports_none_above_it() -> None:
    upward = []
    for name, deps in GRAPH.items():
        if name == "registry":
            continue
        for dep in deps:
            if _layer(dep) > _layer(name):
                upward.append(
                    f"scoring.{name} (layer {_layer(name)}) imports scoring.{dep} (layer {_layer(dep)})"
                )
    assert not upward, "\n".join(upward)


def test_no_import_circle() -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for dep in sorted(GRAPH.get(name, ())):
            if state.get(dep) == 1:
                circle = path[path.index(dep) :] + [dep]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[name] = 2

    for name in GRAPH:
        if name not in state:
            visit(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, (
        f"scoring/{MODULES[name].relative_to(ROOT)}: {lines} lines; split a concern out"
    )


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checks above are only as good as the import reader: a lazy import inside a function
    and a relative import are both seen."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from scoring.job import run_job\n    from . import page\n")
    found = _imports("outputs.x", source, {**MODULES, "outputs.x": source})
    assert found == {"job", "outputs"}  # outputs.page is no module: the package itself

"""README.md and every page under docs/ run top to bottom, as a newcomer pastes them.

Each page's ``bash`` and ``python`` blocks run in order in a fresh copy of the project (configs/,
jobs/ and the demo's files, made once by ``scoring demo --dir demo``, what ``make demo`` runs),
all but the set-up ``make`` and ``pip`` lines. Each ``yaml`` block that is a whole config (it has
``model``, ``input`` and ``output``) must validate; its paths need not exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from scoring.config_file import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SETUP = re.compile(r"^\s*(make|pip) ")
# A fenced block, indented or not (inside a list item): its indent, language and body.
BLOCK = re.compile(r"^([ \t]*)```(\w+)[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)
# What a page that names these paths in its commands must leave behind.
PRODUCTS = ("report.html", "out/predicted")

pytestmark = pytest.mark.slow


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of ``page``, in order, dedented."""
    return [(m[2], textwrap.dedent(m[3])) for m in BLOCK.finditer(page.read_text())]


def commands(code: str) -> list[str]:
    """A bash block's commands: one per line (a trailing backslash continues it), set-up lines
    and blank lines left out."""
    lines = code.replace("\\\n", " ").splitlines()
    return [line for line in lines if line.strip() and not SETUP.match(line)]


def runnable(page: Path) -> list[tuple[str, str]]:
    """(language, command or script) of what the test runs for ``page``, in order."""
    out: list[tuple[str, str]] = []
    for language, code in blocks(page):
        if language == "bash":
            out += [("bash", line) for line in commands(code)]
        elif language == "python":
            out.append(("python", code))
    return out


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's files, made once for every page."""
    where = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "scoring"), "demo", "--dir", "demo"],
        cwd=where,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return where / "demo"


def _env() -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_block_of_the_page_runs_as_written(page: Path, demo: Path, tmp_path: Path) -> None:
    steps = runnable(page)
    configs = [code for language, code in blocks(page) if language == "yaml" and _is_config(code)]
    if not steps and not configs:
        pytest.skip("nothing to run: no code block but set-up lines, no whole config")
    for code in configs:
        load_config(data=yaml.safe_load(code), environ={})  # raises ConfigError naming the key

    work = tmp_path / "project"
    for name in ("configs", "jobs", "tests/data"):  # tests/data: small real models (the VAD)
        shutil.copytree(ROOT / name, work / name)
    shutil.copytree(demo, work / "demo")
    env = _env()
    for language, code in steps:
        argv = ["bash", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{code}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, f"{code}\n{proc.stderr[-3000:]}"
    for product in PRODUCTS:
        if any(product in code for _, code in steps):
            assert (work / product).exists(), f"{page_id(page)} names {product} but did not write it"


def _is_config(code: str) -> bool:
    tree = yaml.safe_load(code)
    return isinstance(tree, dict) and {"model", "input", "output"} <= tree.keys()


def test_the_pages_run_the_commands_a_newcomer_needs() -> None:
    """Not fewer than README ran before the docs moved: 7 commands, the report page and a
    Ray Dataset written by the Python API."""
    steps = [code for page in PAGES for _, code in runnable(page)]
    assert len(steps) >= 7
    for product in PRODUCTS:
        assert any(product in code for code in steps), product


def test_readme_links_into_docs_resolve() -> None:
    """README is not part of the site, so mkdocs --strict does not check its links."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, missing

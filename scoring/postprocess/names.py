"""Names for a model's classes and characters: labels (``output.postprocess.labels``,
``output.detections.labels``) and a CTC charset (``output.text.charset``), each given as a list,
as ``metadata:KEY`` (the model's own metadata), or as a text file at any URI."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from typing import Any

from scoring import storage
from scoring.errors import ConfigError, StorageError
from scoring.model import ModelInfo

Parse = Callable[[str], tuple[str, ...]]


def labels(
    given: str | list[str] | None, info: ModelInfo, storage_options: dict[str, Any], key: str
) -> tuple[str, ...] | None:
    """Class names: a metadata value as JSON, a Python dict or separated names; a file one a line
    (stripped). Raises ``ConfigError`` naming the config ``key``."""
    if given is None:
        return None
    return _names(given, info, storage_options, key, split, _stripped)


def charset(
    given: str | list[str], info: ModelInfo, storage_options: dict[str, Any], key: str
) -> tuple[str, ...]:
    """CTC classes without the blank, one a line, not stripped (a class may be a space)."""
    return _names(given, info, storage_options, key, lines, lines)


def _stripped(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.strip().splitlines())


def _names(
    given: str | list[str],
    info: ModelInfo,
    storage_options: dict[str, Any],
    key: str,
    from_metadata: Parse,
    from_file: Parse,
) -> tuple[str, ...]:
    if isinstance(given, list):
        return tuple(str(x) for x in given)
    if given.startswith("metadata:"):
        name = given.removeprefix("metadata:")
        if name not in info.metadata:
            raise ConfigError(
                f"config key '{key}' is {given!r} but the model's metadata has no key '{name}' "
                f"(keys: {sorted(info.metadata)}); see `scoring inspect MODEL`"
            )
        return from_metadata(info.metadata[name])
    try:
        text = storage.read_bytes(given, storage_options).decode("utf-8")
    except (StorageError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config key '{key}': cannot read {given}: {exc}") from exc
    return from_file(text)


def split(text: str) -> tuple[str, ...]:
    """Labels from a metadata value: a JSON list or object, a Python dict (Ultralytics' exports
    write ``names`` as ``{0: 'person', 1: 'bicycle', ...}``), one per line, or comma-separated."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = None
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    if isinstance(value, dict):  # {"0": "cat", "1": "dog"}, as some exporters write
        return tuple(str(value[k]) for k in sorted(value, key=lambda k: int(k) if str(k).isdigit() else k))
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    return tuple(p.strip() for p in parts if p.strip())


def lines(text: str) -> tuple[str, ...]:
    """A charset from text: a JSON list, else one class a line (not stripped: a class may be a
    space)."""
    if text.startswith("["):
        try:
            value = json.loads(text)
            if isinstance(value, list):
                return tuple(str(c) for c in value)
        except ValueError:
            pass
    return tuple(line.removesuffix("\r") for line in text.split("\n")[: -1 if text.endswith("\n") else None])

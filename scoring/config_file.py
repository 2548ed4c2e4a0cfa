"""Reading a config: a YAML file (or a dict), the environment and ``--set`` into one ``Config``.

Precedence, lowest first: defaults < the YAML file < environment (``SCORING_<SECTION>__<KEY>``,
e.g. ``SCORING_COMPUTE__BATCH_SIZE=512``) < ``--set section.key=value``. Values from the
environment and ``--set`` are parsed as YAML scalars, so ``--set compute.actors=4`` is an int.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import SerializeAsAny, ValidationError, create_model

from scoring import registry
from scoring.config import Config, input_options, output_options
from scoring.errors import ConfigError
from scoring.functions import is_file

ENV_PREFIX = "SCORING_"


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    data: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build a validated ``Config`` from a YAML file (or ``data``), environment and overrides.

    Raises ``ConfigError`` naming the key, what was expected and what was found.
    """
    tree: dict[str, Any] = dict(data or {})
    if path is not None:
        tree = _read_yaml(Path(path))
        _functions_beside(tree, Path(path).parent)
    env = os.environ if environ is None else environ
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and "__" in name:
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_dotted(tree, dotted, _parse_scalar(value), source=f"environment {name}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. compute.batch_size=512), found {item!r}")
        _set_dotted(tree, key.strip(), _parse_scalar(value), source=f"--set {item}")
    checked = _sections(_section(tree, "input", "format"), _section(tree, "output", "format"))
    try:
        valid = checked.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    # The plain Config, holding the sections as validated (pickled to workers by name).
    fields = {name: getattr(valid, name) for name in Config.model_fields}
    return Config.model_construct(_fields_set=valid.model_fields_set, **fields)


def _functions_beside(tree: dict[str, Any], folder: Path) -> None:
    """A relative ``FILE.py`` of ``input.function`` / ``output.function`` is beside the config
    file, wherever the job is started from (docs/models/functions.md)."""
    for section in ("input", "output"):
        ref = _section(tree, section, "function")
        if isinstance(ref, str) and "://" not in ref and is_file(ref) and not Path(ref).is_absolute():
            tree[section]["function"] = str(folder.resolve() / ref)


def _section(tree: dict[str, Any], section: str, key: str) -> str | None:
    value = tree.get(section)
    return value.get(key) if isinstance(value, dict) else None


@functools.cache
def _sections(fmt: str | None, out: str | None) -> type[Config]:
    """A ``Config`` whose input and output sections are those of these formats."""
    sections: dict[str, Any] = {
        "input": (SerializeAsAny[input_options(fmt)], ...),  # type: ignore[misc]
        "output": (SerializeAsAny[output_options(out)], ...),  # type: ignore[misc]
    }
    return create_model("Config", __base__=Config, **sections)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top, found {type(tree).__name__}")
    return tree


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{source}: config key '{where}' holds a value, not a section")
        node = child
    node[parts[-1]] = value


def _unknown(key: str) -> str:
    """Why ``key`` is refused: a key of other formats than this one's, or no key at all."""
    section, _, name = key.partition(".")
    owners: list[str] = []
    if section == "input" and "." not in name:
        owners = [n for n in registry.INPUTS if name in input_options(n).model_fields]
    elif section == "output" and "." not in name:
        owners = [n for n in registry.OUTPUTS if name in output_options(n).model_fields]
    if owners:
        return f"config key '{key}' is for {section}.format {' or '.join(owners)} only"
    return f"unknown config key '{key}'; check its spelling against the config reference (docs)"


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(_unknown(key))
        elif kind == "missing":
            lines.append(f"missing required config key '{key}'")
        else:
            lines.append(f"config key '{key}': {err['msg'].lower()}, found {err.get('input')!r}")
    return "invalid config:\n  " + "\n  ".join(lines)

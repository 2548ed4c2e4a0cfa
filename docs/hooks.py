"""MkDocs hooks: the reference pages are generated from the code, never copied.

``<!-- generated: cli -->`` becomes the ``--help`` of ``scoring`` and of each of its commands, read
off the click command tree; ``<!-- generated: config -->`` becomes one table per config section,
read off the pydantic models in ``scoring.config`` (key, type, default, the field's description).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

CLI_MARKER = "<!-- generated: cli -->"
CONFIG_MARKER = "<!-- generated: config -->"
WIDTH = 100  # the help text's wrap width: fixed, so the page does not depend on the terminal


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    return markdown


# -- the CLI ----------------------------------------------------------------------------------


def cli_reference() -> str:
    """A heading and a fenced block of ``--help`` for ``scoring`` and each subcommand."""
    from scoring.cli import cli

    settings = {"terminal_width": WIDTH, "max_content_width": WIDTH, **cli.context_settings}
    root = click.Context(cli, info_name="scoring", **settings)
    parts = [_help_block("scoring", cli.get_help(root))]
    if isinstance(cli, click.Group):
        for name in cli.list_commands(root):
            command = cli.get_command(root, name)
            if command is None or command.hidden:
                continue
            ctx = click.Context(command, info_name=name, parent=root, **command.context_settings)
            parts.append(_help_block(f"scoring {name}", command.get_help(ctx)))
    return "\n".join(parts)


def _help_block(title: str, text: str) -> str:
    return f"### `{title}`\n\n```text\n{text.rstrip()}\n```\n"


# -- the config -------------------------------------------------------------------------------


def config_reference() -> str:
    """One table per section of ``scoring.config.Config``, nested sections after their parent."""
    from scoring.config import Config

    out = []
    for prefix, model in _sections("", Config):
        title = f"`{prefix}` {{ #{_anchor(prefix)} }}" if prefix else "Top level"
        rows = [
            f"| `{_key(prefix, name)}` | {_type(field, _key(prefix, name))} | {_default(field)} | "
            f"{_cell(_description(field))} |"
            for name, field in model.model_fields.items()
        ]
        out.append(
            f"### {title}\n\n| key | type | default | description |\n| --- | --- | --- | --- |\n"
            + "\n".join(rows)
            + "\n"
        )
    return "\n".join(out)


def _sections(prefix: str, model: type[BaseModel]) -> Iterator[tuple[str, type[BaseModel]]]:
    """``(dotted prefix, model)`` for ``model`` and, depth first, every section below it."""
    yield prefix, model
    for name, field in model.model_fields.items():
        nested = _section_model(field.annotation)
        if nested is not None:
            yield from _sections(_key(prefix, name), nested)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a section field: ``Section`` or ``Section | None``; else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if _is_union(annotation):
        models = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(models) == 1:
            return _section_model(models[0])
    return None


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _anchor(key: str) -> str:
    """The id of a section's heading: ``model.cuda`` -> ``config-model-cuda``."""
    return "config-" + key.replace(".", "-").replace("_", "-")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _type(field: FieldInfo, key: str) -> str:
    """The type cell; a section's links to its own table."""
    if _section_model(field.annotation) is not None:
        optional = " (or `null`: off)" if _is_union(field.annotation) else ""
        return f"[section](#{_anchor(key)}){optional}"
    text = _type_name(field.annotation)
    bounds = [
        f"{symbol} {getattr(item, attr)}"
        for item in field.metadata
        for attr, symbol in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))
        if getattr(item, attr, None) is not None
    ]
    return f"`{text}` ({', '.join(bounds)})" if bounds else f"`{text}`"


def _type_name(annotation: Any) -> str:
    """A type as a config author reads it: ``int | auto``, ``list[cuda | tensorrt | cpu]``."""
    if annotation is None or annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if _is_union(annotation):  # null last, as "X | null"
        ordered = [a for a in args if a is not type(None)] + [a for a in args if a is type(None)]
        return " | ".join(_type_name(a) for a in ordered)
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "its section's defaults"
    return f"`{_yaml(value)}`"


def _yaml(value: Any) -> str:
    """A default as it would be written in YAML, on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _description(field: FieldInfo) -> str:
    return getattr(field, "description", None) or ""


def _cell(text: str) -> str:
    """Prose safe in a Markdown table cell: pipes escaped, one line. (Types and defaults are code
    spans, inside which a pipe does not split the cell and a backslash would show.)"""
    return text.replace("|", "\\|").replace("\n", " ")

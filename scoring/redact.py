"""Keeping credentials out of everything scoring writes or prints.

No credential reaches ``_job.json``, the report, the console or a log: every value under
``storage_options`` is replaced by ``***`` (its key is kept), the ``user:password@`` part of
every URL is removed, ``argv`` is redacted whatever the shape of a ``--set`` value, and any text
that quotes a secret value (an error message naming an endpoint, say) has it masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

MASK = "***"
# scheme://user:password@host, scheme://token@host: everything between "//" and "@".
USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")
# Azure connection strings and the like, in any text: AccountKey=…; SharedAccessSignature=…
KEYED = re.compile(
    r"(?P<key>(AccountKey|SharedAccessSignature|SharedAccessKey|sig|password|secret|token)=)[^;&\s'\"]+",
    re.IGNORECASE,
)


PAIR = re.compile(r"[A-Za-z]+=(?P<value>[^;&\s]+)")  # Key=value; pairs of a connection string
PASSWORD = re.compile(r"//[^/@:\s]+:(?P<password>[^/@\s]+)@")


def text(value: str, secrets: Iterable[str] = ()) -> str:
    """``value`` with URL credentials, key=value secrets and the given ``secrets`` masked."""
    out = USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", value)
    out = KEYED.sub(lambda m: f"{m['key']}{MASK}", out)
    for secret in secrets:
        if len(secret) >= 4:
            out = out.replace(secret, MASK)
    return out


def values(storage_options: Any) -> list[str]:
    """Every string under ``storage_options`` (the values to mask wherever they are quoted)."""
    if isinstance(storage_options, dict):
        return [v for item in storage_options.values() for v in values(item)]
    if isinstance(storage_options, (list, tuple)):
        return [v for item in storage_options for v in values(item)]
    if not isinstance(storage_options, str):
        return []
    # The parts too, wherever one is quoted alone: a connection string's values, a URL's password.
    parts = [m["value"] for m in PAIR.finditer(storage_options)]
    parts += [m["password"] for m in PASSWORD.finditer(storage_options)]
    return [storage_options, *parts]


# Catalog properties shown as they are (URL credentials still removed); every other one is masked
# (credentials, tokens, keys: s3.secret-access-key, credential, token, ...).
CATALOG_SHOWN = ("name", "type", "uri", "warehouse")


def config(data: dict[str, Any]) -> dict[str, Any]:
    """A config as plain data (``Config.model_dump``), redacted: ``storage_options`` values
    masked at any depth, catalog properties but their name, type, uri and warehouse, URL
    credentials removed from every string."""
    secrets = config_values(data)
    out = _strings(data, secrets)
    out["storage_options"] = _mask(data.get("storage_options") or {})
    for section in ("input", "output"):
        catalog = (out.get(section) or {}).get("catalog")
        if isinstance(catalog, dict):
            out[section]["catalog"] = {k: v if k in CATALOG_SHOWN else _mask(v) for k, v in catalog.items()}
    return out


def config_values(data: Any) -> list[str]:
    """The secret strings of a config (as plain data or a ``Config``): every value under
    ``storage_options``, and the catalog properties that ``config`` masks."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    found = values(data.get("storage_options") or {})
    for section in ("input", "output"):
        catalog = (data.get(section) or {}).get("catalog") or {}
        found += values({k: v for k, v in catalog.items() if k not in CATALOG_SHOWN})
    return found


def argv(args: Sequence[str], secrets: Iterable[str] = ()) -> list[str]:
    """Command-line arguments with secrets masked: the value of a ``--set`` whose key is under
    ``storage_options`` (whatever its shape: ``storage_options={key: A, secret: B}``), and
    credentials in any argument."""
    known = list(secrets)
    out, following_set = [], False
    for arg in args:
        if arg.startswith("--set="):
            arg = "--set=" + _set_item(arg[len("--set=") :])
        elif following_set:
            arg = _set_item(arg)
        following_set = arg == "--set"
        out.append(text(arg, known))
    return out


def _set_item(item: str) -> str:
    key, eq, _ = item.partition("=")
    parts = key.strip().split(".")
    catalog = len(parts) >= 2 and parts[1] == "catalog" and (len(parts) == 2 or parts[2] not in CATALOG_SHOWN)
    return f"{key}={MASK}" if eq and (parts[0] == "storage_options" or catalog) else item


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(v) for v in value]
    return MASK if value not in (None, True, False) else value


def _strings(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strings(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v, secrets) for v in value]
    return text(value, secrets) if isinstance(value, str) else value

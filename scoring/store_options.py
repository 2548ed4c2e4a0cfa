"""``storage_options`` as the table libraries name them: one config serves fsspec, delta-rs and
pyiceberg.

``storage_options`` keeps fsspec's names (``endpoint_url``, ``key``, ``secret``,
``client_kwargs.region_name``...); delta-rs (object_store) and pyiceberg's FileIO take their own.
Keys already in a library's own form pass through; timeouts are set unless given, as
``storage.TIMEOUTS`` does for fsspec, so a stalled store fails the call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

OBJECT_STORE_KEYS = {
    "s3": {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN"},
    "gs": {"token": "GOOGLE_SERVICE_ACCOUNT"},
    "az": {"account_name": "AZURE_STORAGE_ACCOUNT_NAME", "account_key": "AZURE_STORAGE_ACCOUNT_KEY"},
}
PYICEBERG_KEYS = {
    "s3": {"key": "s3.access-key-id", "secret": "s3.secret-access-key", "token": "s3.session-token"},
    "gs": {"token": "gcs.oauth2.token", "project": "gcs.project-id"},
    "az": {"account_name": "adls.account-name", "account_key": "adls.account-key"},
}
# Connect and request timeouts, as TIMEOUTS does for fsspec: a stalled store fails the call.
# object_store's own retries: 3, within a minute (its default, 10 within 3 minutes, keeps a call on a
# stalled store for 5 minutes).
OBJECT_STORE_TIMEOUTS = {
    "connect_timeout": "5s",
    "timeout": "30s",
    "max_retries": "3",
    "retry_timeout": "60s",
}
PYICEBERG_TIMEOUTS = {"s3.connect-timeout": "5", "s3.request-timeout": "30"}


def _family(uri: str) -> str:
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    return {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}.get(protocol, protocol)


def object_store_options(uri: str, storage_options: dict[str, Any]) -> dict[str, str]:
    """``storage_options`` as delta-rs (object_store) takes them for ``uri``: fsspec's names
    translated (``endpoint_url``, ``key``, ``secret``, ``client_kwargs.region_name``...), keys
    already in object_store's form (upper case) kept, timeouts set unless given."""
    family = _family(uri)
    if family == "file":
        return {}
    out = _translated(
        family, storage_options, OBJECT_STORE_KEYS, ("AWS_ENDPOINT_URL", "AWS_REGION"), str.isupper
    )
    if out.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        out["AWS_ALLOW_HTTP"] = "true"
    out = {k: v for k, v in OBJECT_STORE_TIMEOUTS.items() if k not in storage_options} | out
    if family == "s3":
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        out.setdefault("AWS_REGION", region)
    return out


def pyiceberg_properties(uri: str, storage_options: dict[str, Any]) -> dict[str, str]:
    """``storage_options`` as pyiceberg's FileIO takes them (``s3.endpoint``,
    ``s3.access-key-id``...), keys already in pyiceberg's dotted form kept, timeouts set."""
    family = _family(uri)
    out = _translated(
        family, storage_options, PYICEBERG_KEYS, ("s3.endpoint", "s3.region"), lambda k: "." in k
    )
    if family == "s3":
        out = PYICEBERG_TIMEOUTS | out
        out.setdefault("s3.region", os.environ.get("AWS_REGION") or "us-east-1")
    return out


def _translated(
    family: str,
    storage_options: dict[str, Any],
    keys: dict[str, dict[str, str]],
    s3: tuple[str, str],
    native: Callable[[str], bool],
) -> dict[str, str]:
    """fsspec's option names as another library's: credentials by ``keys``, S3's endpoint and
    region by ``s3``, the library's own names (``native``) as they are; the rest left out."""
    names = keys.get(family, {})
    out = {}
    for key, value in storage_options.items():
        if key in names:
            out[names[key]] = str(value)
        elif key == "endpoint_url" and family == "s3":
            out[s3[0]] = str(value)
        elif (
            key == "client_kwargs" and family == "s3" and isinstance(value, dict) and value.get("region_name")
        ):
            out[s3[1]] = str(value["region_name"])
        elif native(key) or key in OBJECT_STORE_TIMEOUTS:
            out[key] = str(value)
    return out

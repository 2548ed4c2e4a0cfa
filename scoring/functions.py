"""The user's own code (``input.function``, ``output.function``): found on the driver, run on the
workers (docs/models/functions.md).

A reference is ``FILE.py:NAME`` or ``package.module:NAME``. A file is read on the driver (a local
path or any fsspec URI) and its source text travels with the job, so no worker needs a shared
disk: each process compiles it once, the first time it is called. A module is imported where the
function runs (it must be installed there: the runtime env on a cluster). ``load`` raises
``ConfigError`` for what no worker could run: a file that cannot be read or compiled, a name it
does not define, a module that is not installed here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from scoring import storage
from scoring.errors import ConfigError, StorageError

_compiled: dict[tuple[str, str], Callable[..., Any]] = {}  # (reference, source hash) -> function
_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class UserFunction:
    """A user's function, as plain data: ``ref`` as configured, the ``key`` that set it (for
    messages), and a file's ``source`` (None for a module's function)."""

    ref: str
    key: str
    source: str | None = None

    @property
    def name(self) -> str:
        return self.ref.rpartition(":")[2]

    def get(self) -> Callable[..., Any]:
        """The function itself: compiled (a file) or imported (a module) once per process."""
        digest = hashlib.sha256((self.source or "").encode()).hexdigest()
        found = _compiled.get((self.ref, digest))
        if found is None:
            with _lock:
                found = _compiled.get((self.ref, digest)) or _resolve(self)
                _compiled[(self.ref, digest)] = found
        return found


def is_file(ref: str) -> bool:
    """Whether ``ref`` names a Python file (``FILE.py:NAME``) rather than a module."""
    return ref.rpartition(":")[0].endswith(".py")


def load(ref: str, key: str, storage_options: dict[str, Any]) -> UserFunction:
    """The function ``ref`` names, checked here (on the driver); see the module docstring."""
    where, sep, name = ref.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ConfigError(
            f"config key '{key}' is {ref!r}; expected FILE.py:NAME (a local path or URI) or "
            "package.module:NAME, e.g. decode.py:boxes"
        )
    if not is_file(ref):
        if importlib.util.find_spec(where.split(".")[0]) is None:
            raise ConfigError(
                f"config key '{key}': no module {where!r} is installed here; install it (on a cluster, "
                "in the runtime env of every node), or give a file: FILE.py:NAME"
            )
        fn = UserFunction(ref, key)
    else:
        try:
            source = storage.read_bytes(where, storage_options).decode()
        except (StorageError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config key '{key}': cannot read {where}: {exc}") from exc
        fn = UserFunction(ref, key, source)
    fn.get()  # compiles or imports it here, so a mistake is found before the job starts
    return fn


def _resolve(fn: UserFunction) -> Callable[..., Any]:
    where, _, name = fn.ref.rpartition(":")
    if fn.source is None:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ConfigError(f"config key '{fn.key}': cannot import {where}: {exc}") from exc
    else:
        # A module of its own, registered by a name of its own, so that what the file defines
        # (dataclasses, pickled values) finds its module; its path names it in tracebacks.
        module = types.ModuleType(f"scoring_user_{hashlib.sha256(fn.ref.encode()).hexdigest()[:12]}")
        module.__file__ = where
        sys.modules[module.__name__] = module
        try:
            exec(compile(fn.source, where, "exec"), module.__dict__)  # the user's own code, by design
        except Exception as exc:  # anything the file raises as it is loaded
            raise ConfigError(
                f"config key '{fn.key}': {where} fails as it is loaded: {type(exc).__name__}: {exc}"
            ) from exc
    found = getattr(module, name, None)
    if not callable(found):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ConfigError(
            f"config key '{fn.key}': {where} defines no function {name!r} (functions found: {defined})"
        )
    return found  # type: ignore[no-any-return]

"""Helpers the tests share: jobs and files to run them on, a TCP relay that stalls storage, a
pseudo-terminal that reads the CLI's progress bar. Fixtures stay in ``conftest.py``."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring import registry

# Every registered runner: a test parametrized with it holds each runner to the same result.
RUNNERS = pytest.mark.parametrize("runner", sorted(registry.RUNNERS))


KEYS = {"key": "testing", "secret": "testing"}

# The environment of the Ray processes a test starts on 127.0.0.1, and of the drivers that join
# them: Ray 2.60 keeps loopback as a node's address only where it treats the machine as a laptop
# (as on macOS; scoring.cluster.start_local). Without it, `ray start --node-ip-address=127.0.0.1`
# listens on the machine's address, and a driver sent to 127.0.0.1:PORT goes to the machine's.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def options(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, **KEYS}


def upload(fs: Any, local: Path, remote: str) -> None:
    fs.put(str(local), remote, recursive=local.is_dir())


class TcpProxy:
    """A TCP relay on 127.0.0.1 in front of ``upstream`` (HOST:PORT): storage that fails, for
    real. ``mode``: ``pass`` relays bytes; ``stall`` accepts and relays nothing (connections
    open, no answer, ever); ``refuse`` closes the port (connection refused) and resets what is
    open."""

    def __init__(self, upstream: str) -> None:
        import threading

        self.host, port = upstream.removeprefix("http://").split(":")
        self.upstream_port = int(port)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.mode = "pass"
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.sent = bytearray()  # every byte clients sent upstream, to check what went out
        self.triggers: list[bytes] = []  # see stall_at
        self.stalled_at: float | None = None
        self.then = "stall"
        self.listener: socket.socket | None = None
        self._listen()

    def _listen(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: refusing
            upstream = socket.create_connection((self.host, self.upstream_port))
            with self.lock:
                self.open += [client, upstream]
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(65536):
                if up and self.triggers:
                    self._trigger(data)
                while self.mode == "stall":
                    time.sleep(0.05)
                if self.mode == "refuse":
                    break
                if up:
                    with self.lock:
                        self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def stall_at(self, *requests: bytes, mode: str = "stall") -> None:
        """Relay until requests starting with each of ``requests`` went by, in order; from the
        one matching the last (held, never sent), ``mode`` (stall, or refuse): a store that fails
        at one precise step of a job. ``stalled_at`` says when."""
        self.triggers, self.stalled_at, self.then = list(requests), None, mode

    def _trigger(self, data: bytes) -> None:
        with self.lock:
            hit = bool(self.triggers) and data.startswith(self.triggers[0])
            if hit:
                self.triggers.pop(0)
            if not hit or self.triggers:
                return
            self.stalled_at = time.monotonic()
        self.set(self.then)

    def set(self, mode: str) -> None:
        if mode == "refuse" and self.listener is not None:
            self.listener.close()
            self.listener = None
            with self.lock:
                for s in self.open:
                    with contextlib.suppress(OSError):
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        s.close()
                self.open = []
        elif mode != "refuse" and self.listener is None:
            self._listen()
        self.mode = mode

    def close(self) -> None:
        self.set("refuse")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def features_job(data: str | Path, model: str, keep: Sequence[str] = (), **compute: Any) -> dict[str, Any]:
    """A tables job feeding column ``features`` to model input ``x`` (output, actors and the
    runner are left to ``run_job``'s defaults unless set)."""
    job: dict[str, Any] = {
        "model": {"uri": model},
        "input": {"uri": str(data), "format": "parquet", "columns": {"x": "features"}},
    }
    if keep:
        job["input"]["keep"] = list(keep)
    if compute:
        job["compute"] = compute
    return job


def start_run(path: Path, *args: str) -> subprocess.Popen[str]:
    """``scoring run CONFIG ARGS`` in a process of its own, as a user starts it; output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "scoring", "run", str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_to_end(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``scoring run CONFIG ARGS`` in a process of its own, waited for; output captured."""
    argv = [sys.executable, "-m", "scoring", "run", str(path), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def write_parquet(path: Path, columns: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), str(path))
    return str(path)


def fixed_list(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), int(np.prod(x.shape[1:])))


def read_predictions(out: str | Path) -> pa.Table:
    """Every prediction row, in input order: by shard, then file, then row in the file."""
    table = pq.read_table(Path(out) / "predictions")
    keys = [k for k in ("shard", "file", "row") if k in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys])


def read_errors(out: str | Path) -> pa.Table:
    return pq.read_table(Path(out) / "_errors.parquet")


class Terminal:
    """A command on a pseudo-terminal of ``columns`` columns, as a user runs it: what it shows,
    keys typed into it (Ctrl-C reaches the whole foreground process group, as on a real one)."""

    def __init__(self, argv: list[str], columns: int = 160) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # the pty's size rules
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve(argv[0], argv, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        self.screen = b""
        self.status: int | None = None

    def read(self) -> None:
        while select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.screen += chunk

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait(self, timeout: float) -> int:
        """The exit status; the command is killed and the test fails past ``timeout`` seconds."""
        deadline = time.time() + timeout
        while self.status is None:
            self.read()
            done, raw = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(raw)
            elif time.time() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError(f"still running after {timeout} s:\n{self.text}")
            time.sleep(0.05)
        self.read()
        return self.status

    @property
    def text(self) -> str:
        """What the terminal showed, without its control sequences."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.screen.decode(errors="replace"))

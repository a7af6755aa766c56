"""A real Yilian server process for end-to-end tests: `yilian serve` on a free loopback port.

Crash, multi-worker and schema-driven tests need what the in-process `TestClient` cannot give:
a separate process (or several uvicorn workers) that can be killed with SIGKILL and started again
on the same store. `LiveServer` runs `yilian serve` in its own process group with its own
`YILIAN_VAR_DIR` and `YILIAN_BASE_URL`, waits until every worker has started and
`/fhir/metadata` answers, and stops (or kills) the whole group.

The fixtures `live_server` (one worker, fresh store) and `live_server_factory(workers=2,
env={...})` become available everywhere once `tests/conftest.py` names this module as a plugin,
`pytest_plugins = ("tests.live_server",)` (registering it from a test module instead makes pytest
warn that the module was imported before it could be rewritten). `LiveServer` can also be used
directly, as a context manager, e.g. for a module-scoped server:

    with LiveServer(tmp_path / "var", workers=2) as server:
        httpx.get(server.base_url + "/metadata")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from app.chain.devchain import free_loopback_port, loopback_port_is_free

REPO = Path(__file__).resolve().parents[1]
FHIR_JSON = {"Content-Type": "application/fhir+json"}
STARTUP_LINE = "Application startup complete"


def _serve_command() -> list[str]:
    script = Path(sys.executable).parent / "yilian"
    if script.exists():
        return [str(script), "serve"]
    found = shutil.which("yilian")
    return [found, "serve"] if found else [sys.executable, "-m", "app.cli", "serve"]


class LiveServer:
    """One `yilian serve` process group on 127.0.0.1 with its store under `var_dir`.

    `start()` may be called again after `kill()` or `stop()`: the server comes back on the same
    store (and the same port when it is still free), which is what crash-recovery tests need.
    Server output of every run is appended to `log_path`.
    """

    def __init__(self, var_dir: Path, *, workers: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.var_dir = var_dir
        self.workers = workers
        self.extra_env = dict(env or {})
        self.port = free_loopback_port()
        self.log_path = var_dir.parent / f"{var_dir.name}-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- addresses -----------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The FHIR base, as the server itself announces it (YILIAN_BASE_URL)."""
        return f"{self.root_url}/fhir"

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client on the FHIR base (one per thread: clients are not shared).

        httpx joins paths onto the base with a "/", so `post("")` goes to `/fhir/`, which
        answers 307: post transactions to `server.base_url` itself. A `params=` argument
        replaces a query string already written into the URL.
        """
        kwargs.setdefault("timeout", 60.0)
        return httpx.Client(base_url=self.base_url, **kwargs)

    # -- lifecycle -----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("YILIAN_")}
        env.update({
            "YILIAN_HOST": "127.0.0.1",
            "YILIAN_PORT": str(self.port),
            "YILIAN_WORKERS": str(self.workers),
            "YILIAN_VAR_DIR": str(self.var_dir),
            "YILIAN_DEMO": "false",
            "YILIAN_BASE_URL": self.base_url,
            "YILIAN_LOG_LEVEL": "info",
            "YILIAN_AUTH": "off",  # tests of enforcement pass env={"YILIAN_AUTH": "smart"}
            "YILIAN_CHAIN": "off",  # tests of the chain pass env={"YILIAN_CHAIN": "dev"}
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> LiveServer:
        """Start the server and wait until all its workers serve `/fhir/metadata`."""
        if self.running:
            raise RuntimeError(f"the server on port {self.port} is already running")
        self.var_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            if attempt or not loopback_port_is_free(self.port):
                self.port = free_loopback_port()
            if self._spawn_and_wait(timeout):
                return self
        raise RuntimeError(f"yilian serve did not start after 3 attempts; its output:\n"
                           f"{self.log_tail()}")

    def _spawn_and_wait(self, timeout: float) -> bool:
        """False when the process exited early (typically: port taken), else started."""
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.starts + 1} on port {self.port} ===\n".encode())
            log.flush()
            # Its own session, so kill() reaches the uvicorn supervisor and every worker.
            self.process = subprocess.Popen(
                [*_serve_command(), "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(self.workers)],
                cwd=self.var_dir.parent, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self.process = None
                    return False
                if self._workers_started(log_offset) >= self.workers:
                    with contextlib.suppress(httpx.HTTPError):
                        if probe.get(self.base_url + "/metadata").status_code == 200:
                            return True
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"yilian serve did not answer /fhir/metadata within {timeout}s; its "
                           f"output:\n{self.log_tail()}")

    def _workers_started(self, offset: int) -> int:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace").count(STARTUP_LINE)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server is not running")
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the whole process group (supervisor and workers): a crash, no shutdown."""
        self._signal_group(signal.SIGKILL, grace=0.0)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group (uvicorn shuts down cleanly), SIGKILL after `grace`."""
        self._signal_group(signal.SIGTERM, grace=grace)

    def _signal_group(self, sig: signal.Signals, grace: float) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        pgid = process.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        try:
            process.wait(timeout=grace if sig != signal.SIGKILL else 10.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            process.wait(timeout=10.0)
        # Workers are the group's other members; wait (bounded) until none is left alive, so a
        # restart never races a dying worker for the store. Zombies hold no locks.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.05)

    def restart(self, timeout: float = 60.0) -> LiveServer:
        self.stop()
        return self.start(timeout)

    # -- diagnostics ---------------------------------------------------------------------------

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text("utf-8", "replace")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def tracebacks(self) -> list[str]:
        """Every traceback the server logged (unexpected errors are logged with one)."""
        text = self.log_text()
        out = []
        for chunk in text.split("Traceback (most recent call last):")[1:]:
            lines = []
            for line in chunk.splitlines()[1:]:
                lines.append(line)
                if line and not line.startswith((" ", "\t")) and not line.startswith(
                        ("During handling", "The above exception")):
                    break
            out.append("Traceback (most recent call last):\n" + "\n".join(lines))
        return out

    # -- context manager -----------------------------------------------------------------------

    def __enter__(self) -> LiveServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Members may be zombies waiting for init to reap them; those are dead for our purpose.
    return any(_is_live_member(pid, pgid) for pid in _pids_in_group(pgid))


def _pids_in_group(pgid: int) -> list[int]:
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid]
    pids = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:
                    pids.append(int(entry.name))
    return pids


def _is_live_member(pid: int, pgid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return int(fields[2]) == pgid and fields[0] not in ("Z", "X")


@pytest.fixture
def live_server_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers on demand: `live_server_factory(workers=2, env={...})`; all are stopped
    at the end of the test. Each gets its own var dir under the test's tmp_path."""
    servers: list[LiveServer] = []

    def start(*, workers: int = 1, env: dict[str, str] | None = None) -> LiveServer:
        server = LiveServer(tmp_path / f"var{len(servers)}", workers=workers, env=env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(live_server_factory: Callable[..., LiveServer]) -> LiveServer:
    """A running one-worker server on a fresh store."""
    return live_server_factory()

"""Starting and stopping the servers under test, each in its own process group on 127.0.0.1.

A `ServerProcess` is a context manager: leaving it (normally, on error or on Ctrl-C) sends
SIGTERM to the whole process group, waits, then SIGKILLs whatever is left, so no uvicorn worker
outlives the benchmark.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every server a benchmark started is stopped."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


class ServerError(RuntimeError):
    pass


class ServerProcess:
    """One server started from `argv` with `env` added to ours, ready once `ready_path` is 200."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path, *,
                 env: dict[str, str] | None = None, ready_path: str = "/",
                 ready_timeout: float = 180.0) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.env = env or {}
        self.ready_path = ready_path
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError(f"{self.name} is not running")
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with code {self.proc.returncode} before "
                                  f"answering; last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
                conn.request("GET", self.ready_path)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
                last_error = f"HTTP {status}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.25)
        raise ServerError(f"{self.name} did not answer 200 on {self.ready_path} within "
                          f"{self.ready_timeout:.0f} s (last: {last_error}); log tail:\n"
                          f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the process group (uvicorn then closes the store), SIGKILL after `grace` s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        # Workers of a multi-worker uvicorn may linger after the supervisor; kill the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.stop(grace=5)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def yilian_server(var_dir: Path, log_path: Path, *, extra_env: dict[str, str] | None = None,
                  ready_timeout: float = 300.0) -> ServerProcess:
    """The FHIR server on a free port with its store in `var_dir` (auditing off unless
    `extra_env` says otherwise).

    It runs `python -m app.cli serve`, the same entry point as `.venv/bin/yilian serve`, so a
    stale editable install of the package cannot make the benchmark import the wrong `app`.
    """
    port = free_port()
    env = {"YILIAN_HOST": HOST, "YILIAN_PORT": str(port),
           "YILIAN_BASE_URL": f"http://{HOST}:{port}/fhir", "YILIAN_VAR_DIR": str(var_dir),
           "YILIAN_DEMO": "false", "YILIAN_AUTH": "off",
           # what the earlier benchmarks measure: the FHIR server without its audit trail;
           # bench/audit_chain.py switches both on (the product's defaults)
           "YILIAN_AUDIT": "off", "YILIAN_CHAIN": "off",
           "YILIAN_LOG_LEVEL": "warning", **(extra_env or {})}
    return ServerProcess("yilian", [sys.executable, "-m", "app.cli", "serve"], port, log_path,
                         env=env, ready_path="/fhir/metadata", ready_timeout=ready_timeout)


def baseline_server(log_path: Path) -> ServerProcess:
    """The bare FastAPI app of bench/baseline_app.py, with the FHIR server's uvicorn options."""
    port = free_port()
    return ServerProcess("baseline", [sys.executable, "-m", "bench.baseline_app", "--port",
                                      str(port)], port, log_path,
                         env={"YILIAN_LOG_LEVEL": "warning"}, ready_path="/fixed",
                         ready_timeout=60.0)

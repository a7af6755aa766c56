"""A real MongoDB-protocol server for the tests: FerretDB v1.24.0 on its SQLite backend, on
loopback, with its data in a directory of the test's own (issue 6, docs/mongodb-options.md).

`make ferretdb` (a prerequisite of `make test`) builds the binary into the venv's bin directory
from the module pinned in deploy/ferretdb/. `YILIAN_FERRETDB` names another binary.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.chain.devchain import free_loopback_port, stop_process

VERSION = "v1.24.0"


def ferretdb_binary() -> Path:
    named = os.environ.get("YILIAN_FERRETDB")
    return Path(named) if named else Path(sys.executable).parent / "ferretdb"


class FerretDBError(RuntimeError):
    pass


@dataclass
class FerretDB:
    """One FerretDB process on 127.0.0.1 (a context manager that stops it on exit)."""

    data_dir: Path
    port: int = 0
    startup_timeout: float = 15.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "ferretdb.log"

    def start(self) -> FerretDB:
        binary = ferretdb_binary()
        if not binary.is_file():
            raise FerretDBError(f"{binary} is missing: `make ferretdb` builds FerretDB {VERSION}")
        if self._proc is not None:
            raise FerretDBError(f"FerretDB already runs on port {self.port}")
        self.port = self.port or free_loopback_port()
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "state").mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(binary), "--handler=sqlite",
                 f"--sqlite-url=file:{(self.data_dir / 'data').resolve()}/",
                 f"--state-dir={(self.data_dir / 'state').resolve()}",
                 f"--listen-addr=127.0.0.1:{self.port}", "--debug-addr=-",
                 "--telemetry=disable", "--log-level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise FerretDBError(f"FerretDB exited at start: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise FerretDBError(f"FerretDB did not listen on port {self.port} within "
                            f"{self.startup_timeout:.0f} s: {self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, grace)

    def kill(self) -> None:
        """SIGKILL: what a crash leaves behind."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> FerretDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Local Ethereum dev chain: anvil from the pinned npm package, on a loopback port.

Used by the contract tests now and by `yilian serve` once the chain is wired (issue 5). The binary
is npm `@foundry-rs/anvil-linux-amd64` (pinned in package.json; installed by `npm ci`), run
directly rather than through the `@foundry-rs/anvil` wrapper: the wrapper's other platform
packages are not resolvable from this registry, so its lock entry would make `npm ci` fail.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
_PLATFORM_PACKAGES = {("Linux", "x86_64"): "anvil-linux-amd64"}


class DevChainError(RuntimeError):
    """anvil is missing, would not start, or did not answer JSON-RPC in time."""


def anvil_binary(node_modules: Path = REPO_ROOT / "node_modules") -> Path:
    """The anvil executable installed by `npm ci` for this platform."""
    key = (platform.system(), platform.machine())
    package = _PLATFORM_PACKAGES.get(key)
    if package is None:
        raise DevChainError(f"no pinned anvil build for {key[0]}/{key[1]}; "
                            f"supported: {sorted(_PLATFORM_PACKAGES)}")
    binary = node_modules / "@foundry-rs" / package / "bin" / "anvil"
    if not os.access(binary, os.X_OK):
        raise DevChainError(f"{binary} is missing or not executable: run `npm ci "
                            "--legacy-peer-deps --omit=optional` (or `make e2e-deps`)")
    return binary


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_port_is_free(port: int) -> bool:
    """Whether `port` of 127.0.0.1 can be bound right now (to reuse a recorded port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def rpc(url: str, method: str, params: list[object] | None = None, timeout: float = 5.0) -> object:
    """One JSON-RPC call, without web3: enough to tell whether the chain is up."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.loads(resp.read())
    if "error" in reply:
        raise DevChainError(f"{method} failed on {url}: {reply['error']}")
    return reply["result"]


# CPU niceness added to the dev chain and the anchoring process: anchoring is background work
# beside the workers that answer requests, so when the cores are saturated the answers come
# first and anchoring catches up in the idle time; its lag shows in /chain/status (and holds
# writes back under YILIAN_AUDIT_FAIL_CLOSED)
BACKGROUND_NICE = 10


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL when it has not exited after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def niced(argv: list[str]) -> list[str]:
    """`argv` run through nice(1) at BACKGROUND_NICE (as is when there is no nice(1))."""
    nice = shutil.which("nice")
    return [nice, "-n", str(BACKGROUND_NICE), *argv] if nice else argv


@dataclass
class DevChain:
    """An anvil process on 127.0.0.1; a context manager that stops it on exit.

    `state_file`, when given, is loaded on start and dumped every `state_interval` seconds and on
    exit, so a crash loses at most one interval.
    """

    port: int = 0
    chain_id: int = 31337
    state_file: Path | None = None
    state_interval: int = 5
    binary: Path | None = None
    startup_timeout: float = 20.0
    extra_args: list[str] = field(default_factory=list)
    # anvil niced (`niced`), below the processes that answer requests
    background: bool = False
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DevChain:
        if self._proc is not None:
            raise DevChainError(f"anvil already running on {self.url}")
        binary = self.binary or anvil_binary()
        self.port = self.port or free_loopback_port()
        args = [str(binary), "--host", "127.0.0.1", "--port", str(self.port),
                "--chain-id", str(self.chain_id), "--silent"]
        if self.state_file is not None:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            args += ["--state", str(self.state_file), "--state-interval", str(self.state_interval)]
        argv = args + self.extra_args
        if self.background:
            argv = niced(argv)
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise DevChainError(f"anvil exited with status {code} on port {self.port}: "
                                    f"{err.strip()[-500:] or 'no output'}")
            try:
                if int(str(rpc(self.url, "eth_chainId", timeout=1.0)), 16) == self.chain_id:
                    return
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.05)
        self.stop()
        raise DevChainError(f"anvil did not answer on {self.url} within {self.startup_timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (anvil writes `--state` on a clean exit), SIGKILL after `timeout`."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc, timeout)
        if proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> DevChain:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

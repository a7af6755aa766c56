"""Load generation with wrk (https://github.com/wg/wrk) and a Lua script for URL mixes.

Pure-Python clients saturate a core long before a fast server does, so HTTP GET load comes from
wrk. `lua/random_paths.lua` draws each request's path from a file at random and prints the
exact counts and latency percentiles as one `BENCH_JSON` line, which `run_wrk` parses. Extra
request headers (an `Authorization: Bearer` token) come from a file `write_headers` makes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

SCRIPT = Path(__file__).resolve().parent / "lua" / "random_paths.lua"


class WrkMissing(RuntimeError):
    pass


def ensure_wrk() -> str:
    """Path of the wrk binary; installs Debian's `wrk` with apt-get when missing and root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise WrkMissing("wrk is not installed. Install it (Debian/Ubuntu: `sudo apt-get install "
                         "-y wrk`; macOS: `brew install wrk`) and run the benchmark again")
    print("wrk not found; installing it with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, timeout=600)
    found = shutil.which("wrk")
    if not found:
        raise WrkMissing("apt-get installed wrk but it is not on the PATH")
    return found


def wrk_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0] if text else "unknown"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int]

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx/3xx answer or never completed."""
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_paths(path: Path, paths: list[str]) -> Path:
    if not paths:
        raise ValueError(f"no request paths to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(paths) + "\n")
    return path


# RFC 9110 field-name (token) and a field value without control characters.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[^\x00-\x1f\x7f]*")


def write_headers(path: Path, headers: Mapping[str, str]) -> Path:
    """A headers file for `run_wrk(headers_file=...)`: one `Name: value` a line, readable by
    the owner only (it may hold a bearer token)."""
    lines = []
    for name, value in headers.items():
        if not _FIELD_NAME.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"header {name!r} cannot be sent as one `Name: value` line")
        lines.append(f"{name}: {value.strip()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(binary: str, port: int, paths_file: Path, *, seconds: float, connections: int,
            threads: int = 2, timeout_s: float = 10.0, log_path: Path | None = None,
            headers_file: Path | None = None, script: Path = SCRIPT) -> WrkResult:
    """One wrk run against 127.0.0.1:`port` with paths drawn from `paths_file`, sending the
    headers of `headers_file` (see `write_headers`) with every request; `script` is the Lua
    script (another one must take the same arguments and print the same BENCH_JSON line)."""
    threads = max(1, min(threads, connections))
    argv = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={max(1, round(timeout_s))}s", "--latency", "-s", str(script),
            f"http://127.0.0.1:{port}", "--", str(paths_file)]
    if headers_file is not None:
        argv.append(str(headers_file))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 60)
    if log_path is not None:
        with log_path.open("a") as log:
            log.write(f"$ {' '.join(argv)}\n{out.stdout}{out.stderr}\n")
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        detail = out.stderr.strip() or out.stdout
        raise RuntimeError(f"wrk failed (exit {out.returncode}): {detail}")
    data = orjson.loads(line.removeprefix("BENCH_JSON "))
    secs = data["duration_us"] / 1e6
    lat = data["latency_us"]
    return WrkResult(
        requests=data["requests"], seconds=secs,
        requests_per_s=data["requests"] / secs if secs else 0.0,
        p50_ms=lat["p50"] / 1000, p90_ms=lat["p90"] / 1000, p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000, mean_ms=lat["mean"] / 1000, errors=dict(data["errors"]))

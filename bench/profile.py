"""Sampling profiles of the server with py-spy (https://github.com/benfred/py-spy).

py-spy attaches to the running server from outside (no code change, all uvicorn workers with
`--subprocesses`), records collapsed stacks while a workload runs, and `summarize` turns them
into the functions where the time goes: by own time (the leaf of each sample) and by total time
(anywhere on the stack), the latter restricted to the project's code.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from app.text import is_digits

T = TypeVar("T")

PY_SPY_VERSION = "0.4.3"
# A collapsed-stack frame: "function (path/to/file.py:123)".
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def ensure_py_spy() -> str:
    """The py-spy binary, installed into this virtualenv at PY_SPY_VERSION when missing."""
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    found = shutil.which("py-spy")
    if found:
        return found
    print(f"installing py-spy=={PY_SPY_VERSION} into {sys.prefix}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    f"py-spy=={PY_SPY_VERSION}"], check=True, timeout=600)
    if not local.exists():
        raise RuntimeError("pip installed py-spy but its binary is not in the virtualenv")
    return str(local)


class Recording:
    """`py-spy record` attached to `pid` for `seconds`, started now, collected by `wait()`."""

    def __init__(self, binary: str, pid: int, out: Path, seconds: float, rate: int = 100) -> None:
        self.out = out
        self.seconds = seconds
        argv = [binary, "record", "--pid", str(pid), "--subprocesses", "--rate", str(rate),
                "--duration", str(max(1, round(seconds))), "--format", "raw", "-o", str(out)]
        if os.geteuid() != 0:
            argv.insert(0, "sudo")
        self.log = out.with_suffix(".log")
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        time.sleep(0.5)  # let py-spy attach before the workload starts

    def wait(self) -> Path:
        try:
            self.proc.wait(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.returncode != 0 or not self.out.exists():
            raise RuntimeError(f"py-spy failed (exit {self.proc.returncode}): "
                               f"{self.log.read_text(errors='replace')[-2000:]}")
        return self.out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def profiled(binary: str, pid: int, out: Path, seconds: float, workload: Callable[[], T]) -> T:
    """`workload()` while py-spy records `pid` into `out`; the recording is collected (or
    stopped) whatever the workload does."""
    recording = Recording(binary, pid, out, seconds)
    try:
        return workload()
    finally:
        with contextlib.suppress(Exception):
            recording.wait()
        recording.kill()


# Leaves where a sampled thread waits rather than works: the reader/writer pools' idle threads
# and uvloop's loop (its C code is mostly epoll_wait). py-spy's own idle detection misses them.
IDLE_LEAVES = frozenset({
    "concurrent/futures/thread.py:_worker", "asyncio/runners.py:Runner.run",
    "threading.py:Condition.wait", "threading.py:Thread._wait_for_tstate_lock",
    "queue.py:Queue.get", "selectors.py:EpollSelector.select",
})
IDLE = "(waiting: idle pool threads, event loop in epoll)"


@dataclass
class FrameShare:
    frame: str
    samples: int
    percent: float
    hot_line: int | None = None


def _line(raw: str) -> int | None:
    match = FRAME.match(raw.strip())
    return int(match["line"]) if match and match["line"] else None


def _frame_name(raw: str) -> str:
    """`function (file:line)` → `file:function`, paths shortened to the project or package."""
    match = FRAME.match(raw.strip())
    if not match:
        return raw.strip()
    path = match["file"]
    for marker in ("/site-packages/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        repo = str(Path(__file__).resolve().parent.parent) + "/"
        path = path.removeprefix(repo)
    return f"{path}:{match['func']}"


def _is_project(frame: str) -> bool:
    # app/cli.py only starts uvicorn, so it is under every sample and says nothing.
    return frame.startswith(("app/", "bench/")) and not frame.startswith("app/cli.py")


def summarize(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Own-time and (project code) total-time shares of the recorded samples."""
    own: Counter[str] = Counter()
    own_lines: Counter[tuple[str, int | None]] = Counter()
    packages: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not is_digits(count_s):
            continue
        count = int(count_s)
        raws = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        frames = [_frame_name(f) for f in raws]
        if not frames:
            continue
        samples += count
        leaf = IDLE if frames[-1] in IDLE_LEAVES else frames[-1]
        own[leaf] += count
        own_lines[leaf, _line(raws[-1])] += count
        packages[IDLE if leaf == IDLE else _package(leaf)] += count
        for frame in set(frames):
            if _is_project(frame):
                total[frame] += count

    def hot_line(frame: str) -> int | None:
        lines = Counter({ln: n for (f, ln), n in own_lines.items() if f == frame})
        return lines.most_common(1)[0][0] if lines and frame != IDLE else None

    def shares(counter: Counter[str], lines: bool) -> list[dict[str, Any]]:
        return [FrameShare(frame, n, round(100 * n / samples, 1),
                           hot_line(frame) if lines else None).__dict__
                for frame, n in counter.most_common(top)] if samples else []

    return {"samples": samples, "own": shares(own, True),
            "total_project": shares(total, False), "own_by_package": shares(packages, False)}


def _package(frame: str) -> str:
    """`app/fhir/rest.py:read` → `app/fhir`; `starlette/routing.py:…` → `starlette`."""
    path = frame.split(":", 1)[0]
    parts = path.split("/")
    if parts[0] == "app" and len(parts) >= 2:
        return "/".join(parts[:2])
    return parts[0] if len(parts) > 1 else "(standard library)"

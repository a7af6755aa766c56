"""A wrk result of a given rate, for the harnesses' arithmetic tests."""

from __future__ import annotations

from bench.wrk import WrkResult

NO_ERRORS = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}


def run(rps: float, **errors: int) -> WrkResult:
    """10 s at `rps` requests/s, with the socket errors named in `errors`."""
    return WrkResult(requests=int(rps * 10), seconds=10.0, requests_per_s=rps, p50_ms=1.0,
                     p90_ms=2.0, p99_ms=3.0, max_ms=9.0, mean_ms=1.2,
                     errors={**NO_ERRORS, **errors})

"""The ceiling: a bare FastAPI endpoint returning fixed bytes, served like the real server.

Run as `python -m bench.baseline_app --port N`. Worker count, log level, access log and the
uvicorn loop/http implementations are taken from the same `Settings` and the same `uvicorn.run`
arguments that `yilian serve` uses (app/cli.py), so the only difference from the FHIR server is
the work done per request.
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI
from fastapi.responses import Response

# About the size of a small FHIR resource, so transfer costs are comparable.
BODY = (b'{"resourceType":"Patient","id":"pat-000001","meta":{"versionId":"1"},'
        b'"name":[{"text":"\xe5\xbc\xa0\xe4\xb8\x89","family":"\xe5\xbc\xa0",'
        b'"given":["\xe4\xb8\x89"]}],"gender":"male","birthDate":"1949-12-31"}')

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/fixed")
async def fixed() -> Response:
    return Response(BODY, media_type="application/fhir+json; charset=utf-8")


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from app.config import Settings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settings = Settings(host="127.0.0.1", port=args.port)
    uvicorn.run("bench.baseline_app:app", host="127.0.0.1", port=args.port,
                workers=settings.workers, log_level=settings.log_level,
                access_log=False, factory=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `yilian` command: serve the FHIR server (more subcommands come with later parts)."""

from __future__ import annotations

import argparse
import sys

from app.config import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("workers", args.workers)) if v is not None}
    settings = Settings(**overrides)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    print(f"Yilian FHIR R4 server on http://{settings.host}:{settings.port}/fhir "
          f"(store: {settings.store} under {settings.var_dir}/); Ctrl-C stops it", flush=True)
    uvicorn.run("app.asgi:app", host=settings.host, port=settings.port,
                workers=settings.workers, log_level=settings.log_level,
                access_log=False, factory=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="yilian", description="Yilian (医链) FHIR R4 server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the FHIR API (settings from YILIAN_* variables)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=_serve)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

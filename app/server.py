"""The ASGI application: wiring of settings, registry, store, hooks and routes.

`create_app(settings)` builds everything from explicit inputs (no module-level singletons), so
tests build as many independent servers as they like.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.audit.auditor import ChainAuditor
from app.audit.fhir import AuditEvents
from app.audit.hashing import Keyer
from app.auth.authorize import build_authorize_router
from app.auth.authorizer import build_smart_hooks, is_loopback
from app.auth.compartment import PatientCompartment
from app.auth.cors import SmartCors
from app.auth.demo import build_demo_app_router
from app.auth.discovery import build_discovery_router
from app.auth.keys import Keyring
from app.auth.rfc7523_backend import HttpJwksFetcher
from app.auth.rfc7591_registration import build_registration_router
from app.auth.routes_jwks import build_jwks_router
from app.auth.routes_token import build_token_router
from app.auth.sqlite_store import SqliteAuthStore
from app.chain.handles import HandleSource
from app.chain.status import build_chain_router
from app.config import Settings
from app.definitions.profiles import load_profile_resources, with_profiles
from app.definitions.registry import load_registry
from app.fhir.interactions import FhirService
from app.fhir.outcome import FhirError, Issue, error, outcome_bytes
from app.fhir.profile_validation import ProfileValidator
from app.fhir.rest import FHIR_JSON, FastRead, build_router
from app.heap import freeze_startup_heap
from app.pipeline.hooks import Hooks, NoAudit
from app.search.dates import now_instant, parse_offset
from app.search.extract import Indexer
from app.search.query import ParseContext
from app.storage.base import Store

log = logging.getLogger("yilian")


class BodyLimit:
    """Answer 413 with an OperationOutcome once a request body passes `limit` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _send_outcome(send, 413, self._message())
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise FhirError(413, [Issue("error", "too-costly", self._message())])
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except FhirError as exc:
            if not started:
                await _send_outcome(send, exc.status, str(exc))

    def _message(self) -> str:
        return (f"the request body is larger than this server accepts ({self.limit} bytes; "
                "YILIAN_MAX_BODY_BYTES); split the data into smaller requests")


class TrailingSlash:
    """Treat `/fhir/Patient/` as `/fhir/Patient`: a FHIR client may not follow a redirect."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
            if "raw_path" in scope:
                scope["raw_path"] = scope["raw_path"].rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


async def _send_outcome(send: Send, status: int, message: str) -> None:
    body = outcome_bytes([Issue("error", "too-costly" if status == 413 else "exception",
                                message)])
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", FHIR_JSON.encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def seed_conformance(store: Store, resources: list[dict[str, Any]]) -> None:
    """Store the CN conformance resources, writing a new version only when one changed."""
    async with store.unit_of_work() as tx:
        for resource in resources:
            current = await tx.read(resource["resourceType"], resource["id"])
            if current is not None and not current.deleted:
                stored = orjson.loads(current.body)
                stored.pop("meta", None)
                if stored == {k: v for k, v in resource.items() if k != "meta"}:
                    continue
            await tx.put(resource["resourceType"], resource["id"], resource, method="PUT")


def build_store(settings: Settings, indexer: Indexer) -> Store:
    if settings.store == "sqlite":
        from app.storage.sqlite import SqliteStore
        return SqliteStore(settings.sqlite_path, indexer.registry, indexer,
                           snapshot_seconds=settings.search_snapshot_seconds,
                           audit_path=settings.audit_path)
    raise ValueError(f"YILIAN_STORE={settings.store!r} is not supported yet; use 'sqlite'")


def build_service(settings: Settings, hooks: Hooks) -> tuple[FhirService, list[dict[str, Any]]]:
    """The FHIR service on its store (not started), and the CN conformance resources to seed.

    Shared by the HTTP server and the command-line tools, so both run the same interactions.
    """
    profile_resources = load_profile_resources(settings.profiles_dir)
    registry = with_profiles(load_registry(), profile_resources)
    tz = parse_offset(settings.default_timezone)
    base = settings.base_url.rstrip("/")
    indexer = Indexer.from_settings(registry, settings)
    store = build_store(settings, indexer)
    parse_ctx = ParseContext(registry, tz, (base,), settings.default_page_size,
                             settings.max_page_size)
    validator = ProfileValidator(profile_resources, registry)
    return (FhirService(store, registry, settings, hooks, parse_ctx, validator),
            profile_resources)


def start_anchoring(settings: Settings, handle: HandleSource) -> tuple[Any, Any] | None:
    """This worker's anchoring loop (one worker anchors at a time: a lease in the store)."""
    if settings.chain == "off" or settings.audit == "off" or not settings.anchor_in_workers:
        return None
    from app.chain.anchorer import Anchorer

    anchorer = Anchorer(settings.audit_path, settings, handle)
    return anchorer, asyncio.create_task(anchorer.run(), name="yilian-anchorer")


async def stop_anchoring(anchoring: tuple[Any, Any] | None) -> None:
    if anchoring is None:
        return
    anchorer, task = anchoring
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    anchorer.close()


def create_app(settings: Settings | None = None, hooks: Hooks | None = None, *,
               freeze_heap: bool = False) -> FastAPI:
    """The Yilian ASGI app. `freeze_heap` (a serving process, app/asgi.py): once started, the
    objects of its start-up — FHIR definitions, profiles, search parameters, some hundreds of
    thousands — leave the cyclic garbage collector's reach (`freeze_startup_heap`)."""
    settings = settings or Settings()
    keyring = Keyring(settings.keys_dir, settings.token_alg)
    if hooks is None:
        # SMART enforcement (app/auth/authorizer.py) unless authorization is switched off.
        hooks = build_smart_hooks(settings, keyring) if settings.auth == "smart" else Hooks()
    service, profile_resources = build_service(settings, hooks)
    store = service.store
    # The audit trail (app/audit/) and the chain it is anchored on (app/chain/)
    keyer = Keyer.in_var_dir(settings.var_dir)
    chain_handle = HandleSource(settings)
    if settings.audit == "off" and not is_loopback(settings.host):
        raise SystemExit("YILIAN_AUDIT=off records no access and is only allowed on a loopback "
                         f"host; YILIAN_HOST is {settings.host!r}")
    if isinstance(hooks.auditor, NoAudit) and settings.audit == "on":
        hooks.auditor = ChainAuditor(
            store, keyer, PatientCompartment(service.registry,
                                             Indexer.from_settings(service.registry, settings)),
            source=settings.base_url, fail_closed=settings.audit_fail_closed,
            fail_closed_lag_seconds=settings.audit_fail_closed_lag_seconds,
            chain_enabled=settings.chain != "off")
    service.audit_events = AuditEvents(service, keyer, chain_handle)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Generating an RSA key takes ~30 ms of CPU: off the event loop.
        await asyncio.to_thread(keyring.ensure)
        await asyncio.to_thread(keyring.prune)
        await store.start()
        await seed_conformance(store, profile_resources)
        app.state.started = now_instant()
        # Auth state (var/auth.sqlite3) and the client JWK Set fetcher, for the token service.
        auth_store = await asyncio.to_thread(SqliteAuthStore.in_var_dir, settings.var_dir)
        jwks_fetcher = HttpJwksFetcher()
        app.state.auth_store, app.state.jwks_fetcher = auth_store, jwks_fetcher
        anchoring = start_anchoring(settings, chain_handle)
        if freeze_heap:
            freeze_startup_heap()
        try:
            yield
        finally:
            await stop_anchoring(anchoring)
            app.state.auth_store = app.state.jwks_fetcher = None
            jwks_fetcher.close()
            auth_store.close()
            await store.close()

    app = FastAPI(title="Yilian (医链) FHIR R4 server", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.store = store
    app.state.service = service
    app.state.keyring = keyring
    app.state.auth_store = None  # opened in the lifespan
    app.state.jwks_fetcher = None
    app.state.started = now_instant()
    app.state.audit = hooks.auditor  # auth events: app.state.audit.auth_event(...)
    app.state.chain_handle = chain_handle

    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, exc: FhirError) -> Response:
        await service.audit_refusals(exc)
        return Response(outcome_bytes(exc.issues), status_code=exc.status,
                        headers=exc.headers, media_type=FHIR_JSON)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err = error(404, "not-found", f"no FHIR endpoint at {request.url.path}; the FHIR "
                        "base is /fhir")
        elif exc.status_code == 405:
            err = error(405, "not-supported", f"{request.method} is not allowed on "
                        f"{request.url.path}")
        else:
            err = error(exc.status_code, "exception", str(exc.detail))
        return Response(outcome_bytes(err.issues), status_code=err.status, media_type=FHIR_JSON,
                        headers=getattr(exc, "headers", None) or {})

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError) -> Response:
        issues = [Issue("error", "invalid", str(e.get("msg")),
                        (".".join(str(p) for p in e.get("loc", ())),)) for e in exc.errors()]
        return Response(outcome_bytes(issues), status_code=400, media_type=FHIR_JSON)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        err = error(500, "exception", "the server failed unexpectedly; the failure is logged")
        return Response(outcome_bytes(err.issues), status_code=500, media_type=FHIR_JSON)

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return Response(b'{"name":"Yilian","fhir":"/fhir","metadata":"/fhir/metadata"}',
                        media_type="application/json")

    app.include_router(build_chain_router(settings, settings.audit_path, chain_handle))
    app.include_router(build_jwks_router(keyring))
    app.include_router(build_token_router(
        keyring, settings.base_url,
        store=lambda request: request.app.state.auth_store,
        jwks_fetcher=lambda request: request.app.state.jwks_fetcher))
    app.include_router(build_registration_router(
        store=lambda request: request.app.state.auth_store,
        registration_token=settings.registration_token))
    app.include_router(build_authorize_router(
        keyring, settings, service=service,
        store=lambda request: request.app.state.auth_store,
        jwks_fetcher=lambda request: request.app.state.jwks_fetcher))
    # Before the FHIR router: its /fhir/{type}/{id} would take /fhir/.well-known/….
    app.include_router(build_discovery_router(settings.base_url))
    if settings.demo:
        app.include_router(build_demo_app_router(settings.base_url))
    app.include_router(build_router(service))
    app.add_middleware(FastRead, service=service)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(TrailingSlash)
    # Outermost (added last): CORS headers on every answer, FastRead's and errors' too.
    app.add_middleware(SmartCors)
    return app

"""OAuth 2.0 Dynamic Client Registration (RFC 7591): `POST /auth/register`.

Registration is open only to holders of an initial access token (RFC 7591 §3, sent as an RFC 6750
bearer token): one made with `yilian clients token` (stored hashed, with a use count and an
expiry, taken atomically by `AuthStore.use_registration_token`) or the operator's
`YILIAN_REGISTRATION_TOKEN`. The token is checked first, so an unauthenticated caller learns
nothing about the metadata rules; a valid token is used up even when the metadata is then
refused (as a one-time password would be).

Accepted client metadata (§2): `redirect_uris`, `token_endpoint_auth_method` (`none` → public
app, `client_secret_basic` / `client_secret_post` → confidential with a secret,
`private_key_jwt` → confidential asymmetric with `jwks` or `jwks_uri`), `grant_types`,
`response_types` (only `code`), `scope` (the client's ceiling, SMART scope grammar),
`client_name` (and `client_name#zh…` / `client_name#en` variants, §2.2) and SMART's
`launch_uri`. Validation is `app/auth/clients.py`'s, the same as `yilian clients add`. The
server always chooses the `client_id`; a client secret is returned once and stored hashed.

Answers: 201 with the registered metadata (§3.2.1); 400 `invalid_redirect_uri` or
`invalid_client_metadata` (§3.2.2) naming the field; 401 with `WWW-Authenticate: Bearer` for a
missing or unusable initial access token (RFC 6750 §3); `Cache-Control: no-store` always.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.auth.clients import ClientError, Registered, check_redirect_uri, register_client
from app.auth.routes_token import read_body
from app.auth.store import AuthStore, ClientKind, hash_secret

log = logging.getLogger("yilian.auth.registration")

REGISTER_PATH = "/auth/register"
MAX_METADATA_BYTES = 65_536
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
AUTH_METHOD_KINDS: dict[str, ClientKind] = {
    "none": "public",
    "client_secret_basic": "symmetric",
    "client_secret_post": "symmetric",
    "private_key_jwt": "asymmetric",
}
# RFC 7591 §2: the default when the client does not say.
DEFAULT_AUTH_METHOD = "client_secret_basic"

StoreGetter = Callable[[Request], AuthStore | None]


class RegistrationError(Exception):
    """An RFC 7591 §3.2.2 error (or RFC 6750 for the initial access token)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


def _json(body: Mapping[str, Any], status: int, headers: dict[str, str] | None = None,
          ) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={**NO_STORE, **(headers or {})})


def _error(exc: RegistrationError) -> Response:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = (f'Bearer realm="yilian", error="{exc.error}", '
                                       f'error_description="{exc.description}"')
    return _json({"error": exc.error, "error_description": exc.description}, exc.status,
                 headers)


def bearer_token(authorization: str | None) -> str:
    """The initial access token of an `Authorization: Bearer …` header."""
    if authorization is None:
        raise RegistrationError("invalid_token", "an initial access token is required "
                                "(Authorization: Bearer <token from yilian clients token>)",
                                401)
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        raise RegistrationError("invalid_token", "the Authorization header must be "
                                "'Bearer <initial access token>'", 401)
    return token


def _strings(metadata: Mapping[str, Any], name: str) -> list[str] | None:
    value = metadata.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistrationError("invalid_client_metadata", f"{name} must be an array of strings")
    return value


def _string(metadata: Mapping[str, Any], name: str) -> str | None:
    value = metadata.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RegistrationError("invalid_client_metadata", f"{name} must be a string")
    return value


def _names(metadata: Mapping[str, Any]) -> tuple[str, str | None]:
    """(Chinese or default name, English name) from `client_name` and its language-tagged
    variants (RFC 7591 §2.2, e.g. `client_name#zh-CN`, `client_name#en`)."""
    default = _string(metadata, "client_name")
    zh = en = None
    for key in metadata:
        if key.startswith("client_name#"):
            tag = key.partition("#")[2].lower()
            if tag.startswith("zh"):
                zh = _string(metadata, key)
            elif tag.startswith("en"):
                en = _string(metadata, key)
    name = zh or default or en
    if name is None:
        raise RegistrationError("invalid_client_metadata", "client_name is required (the name "
                                "patients see on the approval page)")
    return name, en if en is not None else (default if zh is not None else None)


def register_from_metadata(store: AuthStore, metadata: Any,
                           clock: Callable[[], float] = time.time) -> tuple[Registered, str]:
    """Validate RFC 7591 client metadata and store the client; the registration and the
    token endpoint auth method in effect. `RegistrationError` says which field is wrong."""
    if not isinstance(metadata, Mapping):
        raise RegistrationError("invalid_client_metadata", "the request body must be a JSON "
                                "object of client metadata (RFC 7591 §2)")
    method = _string(metadata, "token_endpoint_auth_method") or DEFAULT_AUTH_METHOD
    kind = AUTH_METHOD_KINDS.get(method)
    if kind is None:
        raise RegistrationError("invalid_client_metadata",
                                f"token_endpoint_auth_method {method[:60]!r} is not supported; "
                                f"use one of {', '.join(AUTH_METHOD_KINDS)}")
    redirect_uris = _strings(metadata, "redirect_uris") or []
    for uri in redirect_uris:
        try:
            check_redirect_uri(uri)
        except ClientError as exc:
            raise RegistrationError("invalid_redirect_uri", str(exc)) from None
    grant_types = _strings(metadata, "grant_types")
    response_types = _strings(metadata, "response_types")
    if response_types is not None and set(response_types) - {"code"}:
        raise RegistrationError("invalid_client_metadata", "response_types may only contain "
                                "'code' (the authorization code flow)")
    if grant_types is not None and "authorization_code" in grant_types \
            and response_types == []:
        raise RegistrationError("invalid_client_metadata", "the authorization_code grant needs "
                                "response_types ['code']")
    jwks = metadata.get("jwks")
    jwks_uri = _string(metadata, "jwks_uri")
    name, name_en = _names(metadata)
    try:
        registered = register_client(
            store, name=name, name_en=name_en, kind=kind, redirect_uris=redirect_uris,
            launch_uri=_string(metadata, "launch_uri"), jwks=jwks, jwks_uri=jwks_uri,
            scope=_string(metadata, "scope"), grant_types=grant_types, clock=clock)
    except ClientError as exc:
        raise RegistrationError("invalid_client_metadata", str(exc)) from None
    return registered, method


def registration_response(registered: Registered, method: str) -> dict[str, Any]:
    """RFC 7591 §3.2.1: everything registered, and the secret once."""
    client = registered.client
    body: dict[str, Any] = {
        "client_id": client.client_id,
        "client_id_issued_at": int(client.created),
        "client_name": client.name_zh,
        "token_endpoint_auth_method": method,
        "grant_types": list(client.grant_types),
        "scope": client.scope,
    }
    if client.name_en != client.name_zh:
        body["client_name#en"] = client.name_en
    if client.redirect_uris:
        body["redirect_uris"] = list(client.redirect_uris)
        body["response_types"] = ["code"]
    if client.launch_uri is not None:
        body["launch_uri"] = client.launch_uri
    if client.jwks is not None:
        body["jwks"] = dict(client.jwks)
    if client.jwks_uri is not None:
        body["jwks_uri"] = client.jwks_uri
    if registered.secret is not None:
        body["client_secret"] = registered.secret
        body["client_secret_expires_at"] = 0  # does not expire (RFC 7591 §3.2.1)
    return body


def build_registration_router(*, store: StoreGetter, registration_token: str = "",
                              clock: Callable[[], float] = time.time) -> APIRouter:
    """`POST /auth/register`. `registration_token` is the operator's fixed initial access
    token (`YILIAN_REGISTRATION_TOKEN`; empty: none)."""
    router = APIRouter()
    fixed_hash = hash_secret(registration_token) if registration_token else None

    def authenticate(auth_store: AuthStore, token: str) -> bool:
        if fixed_hash is not None and hmac.compare_digest(hash_secret(token), fixed_hash):
            return True
        return auth_store.use_registration_token(hash_secret(token), clock())

    @router.post(REGISTER_PATH, include_in_schema=False)
    async def register(request: Request) -> Response:
        auth_store = store(request)
        if auth_store is None:
            return _json({"error": "temporarily_unavailable",
                          "error_description": "the authorization server is starting; try "
                                              "again shortly"}, 503, {"Retry-After": "5"})
        try:
            token = bearer_token(request.headers.get("authorization"))
            if not await run_in_threadpool(authenticate, auth_store, token):
                raise RegistrationError("invalid_token", "the initial access token is unknown, "
                                        "expired or used up", 401)
            media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media != "application/json":
                raise RegistrationError("invalid_client_metadata", "the request body must be "
                                        "application/json (RFC 7591 §3.1)")
            body = await _read_body(request)
            try:
                metadata = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise RegistrationError("invalid_client_metadata",
                                        "the request body is not valid JSON") from None
            registered, method = await run_in_threadpool(register_from_metadata, auth_store,
                                                          metadata, clock)
        except RegistrationError as exc:
            return _error(exc)
        except Exception:  # store failure: never a 500 on a registration request
            log.exception("client registration failed")
            return _json({"error": "temporarily_unavailable",
                          "error_description": "the client could not be stored; try again"},
                         503, {"Retry-After": "5"})
        client = registered.client
        log.info("registered %s client %s (%s) through RFC 7591", client.kind,
                 client.client_id, client.name_zh)
        return _json(registration_response(registered, method), 201)

    return router


async def _read_body(request: Request) -> bytes:
    return await read_body(request, MAX_METADATA_BYTES, RegistrationError(
        "invalid_client_metadata", f"the client metadata is larger than {MAX_METADATA_BYTES} "
        "bytes"))


"""The token service: `POST /auth/token` (RFC 6749 §4.1 authorization_code with RFC 7636 PKCE,
§6 refresh_token, §4.4 client_credentials with RFC 7523 private_key_jwt), `POST /auth/revoke`
(RFC 7009) and `POST /auth/introspect` (RFC 7662).

URLs. The issuer and the endpoint URLs are derived from `settings.base_url` (the public FHIR base
URL): its last path segment (`/fhir`, where the FHIR router is mounted) is replaced by `/auth`,
where these routes are mounted, so `http://127.0.0.1:8080/fhir` gives issuer
`http://127.0.0.1:8080/auth` and token URL `http://127.0.0.1:8080/auth/token`, and a proxy
prefix is kept (`https://h/yy/fhir` → `https://h/yy/auth`). The token URL is the `aud` every
client assertion must carry, on all three endpoints (RFC 7523 §3 lets the token endpoint URL
identify the authorization server). Access tokens get `aud` = the FHIR base URL.

Requests. Bodies are `application/x-www-form-urlencoded` only (UTF-8), at most 64 kB, parsed
with `urllib.parse.parse_qsl`; a parameter sent twice is refused (RFC 6749 §3.2) and one sent
without a value counts as omitted (§3.1).

User flows (authorization_code, refresh_token) go to Authlib's code and refresh grants
(`grants.py`: PKCE S256 for every client, single-use codes whose replay revokes the grant,
rotating refresh tokens bound to their client, narrowing-only `scope`); client authentication
there is `none` (public clients, `client_id` in the body), `client_secret_basic`,
`client_secret_post` (symmetric clients) or `private_key_jwt` (asymmetric clients), each client
only with the method of its kind. client_credentials authenticates with a `client_assertion`
only (`check_client_assertion`, each assertion single use); a request that also carries an
`Authorization` header is refused with 401 `invalid_client` and a `WWW-Authenticate` challenge
naming the scheme the client used (RFC 6749 §5.2); other `invalid_client` errors are 400, the
RFC's default. Revocation and introspection accept private_key_jwt, HTTP Basic and
client_secret_post; revocation also a public client's bare `client_id` (RFC 7009 §5).

Errors are RFC 6749 §5.2 JSON `{"error", "error_description"}`; every response carries
`Cache-Control: no-store` and `Pragma: no-cache`. No input gives a 500: store or key failures
answer 503 `temporarily_unavailable`.

Token (client_credentials): the client must list `client_credentials` in its grant types
(else `unauthorized_client`); `scope` is required and may hold `system/` scopes only (anything
else, or a scope that does not parse, is `invalid_scope`); what is granted is the request
narrowed to the client's registered ceiling (`scopes.narrow`), and nothing left is
`invalid_scope`. The token is an RFC 9068 JWT, `sub` = `client_id`, 300 s (SMART Backend Services).

Revocation (RFC 7009): `token` must be given (else `invalid_request`); `token_type_hint` is
ignored (both kinds are recognised). A valid access token issued to the calling client is
recorded as revoked until its `exp`; a refresh token of the calling client revokes its whole
grant: the grant's refresh tokens and every access token issued under it (`gid`). Unknown,
malformed, expired tokens — and tokens of another client, which are NOT revoked (a client may
only revoke its own tokens, §2.1) — all answer 200
with an empty body, so the answer never tells whether a token exists (§2.2).

Introspection (RFC 7662): `{"active": false}` for anything that is not a valid, unexpired,
unrevoked token of the calling client. A live refresh token answers `active`, `scope` (the
grant's), `client_id`, `sub`, `iss`, `exp`, `token_type` "refresh_token", `fhirUser` and the
launch context. An access token answers `active`, `scope`, `client_id`, `sub`,
`iss`, `aud`, `iat`, `exp`, `jti`, `token_type` "Bearer" and `nbf`, `patient`, `encounter`,
`fhirUser` (as an absolute URL, as in the id_token) when the token has them.

Records. Every token issued or refused (authorization_code, client_credentials), refreshed or
refused, and every revocation is an authorization event of the audit trail
(`record_auth_event`: AuditEvent type DCM 110114 User Authentication, on chain like every
access). A grant revoked here — its refresh token revoked, or a replayed code or refresh token
(`grants.py`) — also gets the inactive version of its Consent (`app/consent/smart.py`); the
revocation itself has already taken effect in the auth store, so a failure to write either is
logged and never undoes it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.auth.bearer import (
    MAX_TOKEN_LENGTH,
    AccessTokenClaims,
    BearerError,
    BearerVerifier,
    issue_access_token,
)
from app.auth.clients import verify_client_secret
from app.auth.grants import FormRequest, build_server
from app.auth.keys import Keyring
from app.auth.rfc7523_backend import JwksFetcher, OAuthError, check_client_assertion
from app.auth.scopes import narrow, parse_scopes
from app.auth.store import AuthStore, Client, hash_secret
from app.consent.smart import SmartConsents

log = logging.getLogger("yilian.auth.token")

TOKEN_PATH = "/auth/token"
REVOKE_PATH = "/auth/revoke"
INTROSPECT_PATH = "/auth/introspect"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 65_536
MAX_FORM_FIELDS = 64
BACKEND_TOKEN_SECONDS = 300
CLIENT_CREDENTIALS = "client_credentials"
USER_FLOW_GRANTS = ("authorization_code", "refresh_token")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_JWS = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")
_SCHEME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")  # RFC 9110 token, bounded


@dataclass(frozen=True)
class AuthUrls:
    """Where the authorization server lives, derived from the FHIR base URL."""

    fhir_base: str
    issuer: str
    token: str
    revoke: str
    introspect: str

    @classmethod
    def from_base_url(cls, base_url: str) -> AuthUrls:
        base = base_url.rstrip("/")
        parts = urlsplit(base)
        prefix = parts.path.rsplit("/", 1)[0] if "/" in parts.path else ""
        issuer = urlunsplit((parts.scheme, parts.netloc, prefix + "/auth", "", ""))
        return cls(fhir_base=base, issuer=issuer, token=issuer + "/token",
                   revoke=issuer + "/revoke", introspect=issuer + "/introspect")


class _NotOpen(Exception):
    """The auth store or JWKS fetcher is not open (outside the app's lifespan)."""


StoreGetter = Callable[[Request], AuthStore | None]
FetcherGetter = Callable[[Request], JwksFetcher | None]


def _json(body: dict[str, Any], status: int = 200,
          headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={**NO_STORE, **(headers or {})})


def _error(exc: OAuthError, request: Request) -> Response:
    headers: dict[str, str] = {}
    status = exc.status_code
    if exc.error == "invalid_client":
        auth = request.headers.get("authorization")
        if auth is not None:
            # RFC 6749 §5.2: the client tried the Authorization header: 401 + a challenge in
            # the scheme it used.
            scheme = auth.strip().split(" ", 1)[0]
            scheme = scheme if _SCHEME.fullmatch(scheme) else "Basic"
            headers["WWW-Authenticate"] = f'{scheme} realm="yilian", error="invalid_client"'
            status = 401
        else:
            status = 400
    return _json({"error": exc.error, "error_description": exc.description}, status, headers)


def _unavailable() -> Response:
    return _json({"error": "temporarily_unavailable",
                  "error_description": "the authorization server cannot answer right now; "
                                       "try again shortly"}, 503, {"Retry-After": "5"})


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def record_auth_event(request: Request, *, subtype: str, success: bool,
                            client_id: str | None, user: str | None = None,
                            patient: str | None = None, scopes: str | None = None,
                            detail: str | None = None) -> None:
    """An authorization event for the audit trail (`app.state.audit.auth_event`: subtype
    token-issued, token-refreshed, token-revoked, authorization-approved or
    authorization-denied; `user` the fhirUser reference, `patient` the Patient id). Never
    raises: the decision it records has been made already."""
    auth_event = getattr(getattr(request.app.state, "audit", None), "auth_event", None)
    if auth_event is None:  # auditing off
        return
    try:
        await auth_event(subtype=subtype, success=success, client_id=client_id, user=user,
                         patient=patient, address=client_address(request), scopes=scopes,
                         detail=detail)
    except Exception:
        log.exception("could not record the %s event of client %s", subtype, client_id)


async def record_grant_revoked(request: Request, auth_store: AuthStore, grant_id: str,
                               reason: str, now: float, *,
                               acting_client: str | None = None) -> None:
    """What follows a grant's revocation: the inactive version of its Consent and the
    token-revoked event. `acting_client`: the client that revoked it (RFC 7009), None when
    the user or the server did. Never raises (the grant is revoked already)."""
    grant = None
    try:
        grant = await run_in_threadpool(auth_store.get_grant, grant_id)
        if grant is not None:
            await SmartConsents(request.app.state.service).revoked(
                grant, now, client_id=acting_client, address=client_address(request))
    except Exception:
        log.exception("could not record the revocation of grant %s in its Consent", grant_id)
    await record_auth_event(request, subtype="token-revoked", success=True,
                            client_id=grant.client_id if grant else None,
                            user=grant.fhir_user if grant else None,
                            patient=grant.patient if grant else None,
                            scopes=grant.scope if grant else None, detail=reason)


async def read_body(request: Request, limit: int, too_big: Exception) -> bytes:
    """The request body, raising `too_big` as soon as it (or its declared length) passes
    `limit` bytes: a large body is never buffered whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """The request's urlencoded form, without blank parameters; `OAuthError` (invalid_request)
    for another content type, a body over `limit` bytes, bad encoding or a repeated name."""
    ctype = request.headers.get("content-type", "")
    media, _, params = ctype.partition(";")
    if media.strip().lower() != FORM_TYPE:
        raise OAuthError("invalid_request", f"the request body must be {FORM_TYPE}")
    charset = re.search(r"charset\s*=\s*\"?([^\";\s]*)", params, re.IGNORECASE)
    if charset and charset.group(1).lower() not in ("utf-8", "utf8", "us-ascii"):
        raise OAuthError("invalid_request", "the form must be encoded in UTF-8")
    body = await read_body(request, limit, OAuthError(
        "invalid_request", f"the request body is larger than {limit} bytes"))
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                          encoding="utf-8", errors="strict", max_num_fields=MAX_FORM_FIELDS)
    except ValueError:  # UnicodeDecodeError included; also too many fields
        raise OAuthError("invalid_request", "the form is not valid UTF-8 "
                         "application/x-www-form-urlencoded data (or has too many "
                         "parameters)") from None
    form: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raise OAuthError("invalid_request",
                             f"parameter {name[:40]!r} is sent more than once (RFC 6749 §3.2)")
        seen.add(name)
        if value:
            form[name] = value
    return form


def build_token_router(keyring: Keyring, base_url: str, *, store: StoreGetter,
                       jwks_fetcher: FetcherGetter,
                       clock: Callable[[], float] = time.time) -> APIRouter:
    """The three endpoints. `store` and `jwks_fetcher` are looked up per request (the app opens
    them in its lifespan); while they are None the endpoints answer 503."""
    urls = AuthUrls.from_base_url(base_url)
    verifier = BearerVerifier(keyring, issuer=urls.issuer, audience=urls.fhir_base,
                              revoked=lambda jti, gid: False, clock=clock, cache_size=0)
    router = APIRouter()

    def own_token(token: str | None, client: Client, auth_store: AuthStore,
                  ) -> AccessTokenClaims | None:
        """The claims of `token` when it is a valid, unexpired, unrevoked access token of
        `client`; None otherwise."""
        if not token or len(token) > MAX_TOKEN_LENGTH or not _JWS.fullmatch(token):
            return None
        now = clock()
        try:
            claims = verifier.verify_token(token, now=now)
        except BearerError:
            return None
        if claims.client_id != client.client_id or claims.expires_at <= now:
            return None
        if auth_store.is_revoked(claims.jti, claims.grant_id):
            return None
        return claims

    @router.post(TOKEN_PATH, include_in_schema=False)
    async def token(request: Request) -> Response:
        client: Client | None = None
        try:
            form = await read_form(request)
            grant_type = form.get("grant_type")
            if grant_type is None:
                raise OAuthError("invalid_request", "grant_type is required")
            if grant_type in USER_FLOW_GRANTS:
                return await user_flow_token(request, form)
            if grant_type != CLIENT_CREDENTIALS:
                raise OAuthError("unsupported_grant_type",
                                 f"grant_type {grant_type[:60]!r} is not supported; use "
                                 "authorization_code, refresh_token or client_credentials")
            client, _ = await authenticate_form(request, form)
            if CLIENT_CREDENTIALS not in client.grant_types:
                raise OAuthError("unauthorized_client", "this client is not registered for "
                                 "the client_credentials grant")
            scope_text = form.get("scope")
            if scope_text is None:
                raise OAuthError("invalid_scope", "scope is required (system/ scopes, e.g. "
                                 "system/Patient.rs)")
            parsed = parse_scopes(scope_text)
            if parsed.invalid:
                raise OAuthError("invalid_scope", f"scope {parsed.invalid[0].scope[:80]!r}: "
                                 f"{parsed.invalid[0].reason}")
            requested = parsed.scopes
            others = sorted(requested.other) + [str(s) for s in requested.clinical
                                                if s.context != "system"]
            if others:
                raise OAuthError("invalid_scope", "backend services are granted system/ "
                                 f"scopes only; remove {' '.join(others)[:200]}")
            granted = narrow(requested, parse_scopes(client.scope).scopes)
            if not granted.clinical:
                raise OAuthError("invalid_scope", "none of the requested scopes is within "
                                 "what this client is registered for")
            access_token = await run_in_threadpool(
                issue_access_token, keyring, issuer=urls.issuer, audience=urls.fhir_base,
                client_id=client.client_id, scope=granted, subject=client.client_id,
                lifetime=BACKEND_TOKEN_SECONDS, now=clock())
        except OAuthError as exc:
            await record_auth_event(request, subtype="token-issued", success=False,
                                    client_id=client.client_id if client else None,
                                    detail=exc.error)
            return _error(exc, request)
        except _NotOpen:
            return _unavailable()
        except Exception:  # store or keyring failure: never a 500 on a token request
            log.exception("token request failed")
            return _unavailable()
        log.info("issued a backend access token to client %s for %s", client.client_id,
                 granted.to_string())
        await record_auth_event(request, subtype="token-issued", success=True,
                                client_id=client.client_id, scopes=granted.to_string())
        return _json({"access_token": access_token, "token_type": "Bearer",
                      "expires_in": BACKEND_TOKEN_SECONDS, "scope": granted.to_string()})

    async def user_flow_token(request: Request, form: dict[str, str]) -> Response:
        """authorization_code and refresh_token through Authlib (`grants.py`): client
        authentication none / client_secret_basic / client_secret_post / private_key_jwt."""
        auth_store = store(request)
        if auth_store is None:
            raise _NotOpen
        server = build_server(store=auth_store, keyring=keyring, issuer=urls.issuer,
                              fhir_base=urls.fhir_base, settings=request.app.state.settings,
                              jwks_fetcher=jwks_fetcher(request), clock=clock)
        header = request.headers.get("authorization")
        if header is not None and header.strip().lower().startswith("basic "):
            try:  # Authlib 1.9.9 raises UnicodeDecodeError on non-UTF-8 Basic credentials
                base64.b64decode(header.strip()[6:].strip()).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise OAuthError("invalid_client", "the Basic credentials are not base64 of "
                                 "UTF-8 client_id:client_secret", 401) from None
        oauth_request = FormRequest("POST", urls.token, request.headers, form)
        status, body, headers = await run_in_threadpool(server.create_token_response,
                                                        oauth_request)
        for grant_id, reason in server.revoked:
            await record_grant_revoked(request, auth_store, grant_id, reason, clock())
        extra = {k: v for k, v in headers if k.lower() == "www-authenticate"}
        failed = isinstance(body, dict) and "error" in body
        if isinstance(body, dict) and "error" in body:
            body = {"error": body["error"],
                    "error_description": body.get("error_description") or body["error"]}
            if status == 401 and not extra:
                extra["WWW-Authenticate"] = 'Basic realm="yilian", error="invalid_client"'
        elif status == 200:
            log.info("issued a user-flow token (%s) to client %s", form.get("grant_type"),
                     form.get("client_id", "(authenticated)"))
        grant = getattr(oauth_request.user, "grant", None)
        authenticated = oauth_request.client
        await record_auth_event(
            request,
            subtype="token-refreshed" if form.get("grant_type") == "refresh_token"
            else "token-issued",
            success=status == 200 and not failed,
            client_id=authenticated.get_client_id() if authenticated is not None else None,
            user=grant.fhir_user if grant is not None else None,
            patient=grant.patient if grant is not None else None,
            scopes=body.get("scope") if isinstance(body, dict) and not failed else None,
            detail=body.get("error") if isinstance(body, dict) and failed else None)
        return _json(body if isinstance(body, dict) else {}, status, extra)

    async def authenticate_any(request: Request, form: dict[str, str], *,
                               allow_public: bool) -> tuple[Client, AuthStore]:
        """Client authentication for revocation and introspection: private_key_jwt, HTTP
        Basic or client_secret_post (symmetric clients), or, when `allow_public`, a public
        client's bare `client_id` (RFC 7009 §2.1 lets public clients revoke their tokens)."""
        if "client_assertion" in form or "client_assertion_type" in form:
            return await authenticate_form(request, form)
        auth_store = store(request)
        if auth_store is None:
            raise _NotOpen
        header = request.headers.get("authorization")
        bad = OAuthError("invalid_client", "client authentication failed")
        if header is not None:
            scheme, _, credentials = header.strip().partition(" ")
            if scheme.lower() != "basic":
                raise bad
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise bad from None
            raw_id, sep, raw_secret = decoded.partition(":")
            if not sep:
                raise bad
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            if form.get("client_id", client_id) != client_id:
                raise OAuthError("invalid_request", "client_id differs from the one in the "
                                 "Authorization header")
        elif "client_secret" in form:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
        elif allow_public and "client_id" in form:
            client = await run_in_threadpool(auth_store.get_client, form["client_id"])
            if client is None or client.kind != "public":
                raise bad
            return client, auth_store
        else:
            return await authenticate_form(request, form)
        client = await run_in_threadpool(auth_store.get_client, client_id) if client_id \
            else None
        if client is None or not verify_client_secret(client, secret):
            raise bad
        return client, auth_store

    async def authenticate_form(request: Request, form: dict[str, str],
                                ) -> tuple[Client, AuthStore]:
        """Authenticate the client of `form`; OAuthError, or _NotOpen while the store is
        not open."""
        if request.headers.get("authorization") is not None:
            raise OAuthError("invalid_client", "this endpoint authenticates clients with a "
                             "client_assertion (private_key_jwt) only; send no Authorization "
                             "header")
        auth_store, fetcher = store(request), jwks_fetcher(request)
        if auth_store is None or fetcher is None:
            raise _NotOpen
        client = await run_in_threadpool(check_client_assertion, form, token_url=urls.token,
                                         store=auth_store, jwks_fetcher=fetcher, clock=clock)
        return client, auth_store

    async def caller_and_token(request: Request, what: str,
                               ) -> tuple[Client, AuthStore, AccessTokenClaims | None, str]:
        """The authenticated caller of a revoke or introspect request, the `token` it names
        if that is a live access token of the caller's own (None otherwise), and the token."""
        form = await read_form(request)
        client, auth_store = await authenticate_any(request, form,
                                                    allow_public=what == "revoke")
        token_value = form.get("token")
        if token_value is None:
            raise OAuthError("invalid_request", f"token is required (the token to {what})")
        claims = await run_in_threadpool(own_token, token_value, client, auth_store)
        return client, auth_store, claims, token_value

    def own_refresh(token: str, client: Client, auth_store: AuthStore,
                    ) -> tuple[Any, Any] | None:
        """(refresh token record, grant) when `token` is a live refresh token of `client`."""
        if len(token) > 256:
            return None
        record = auth_store.get_refresh_token(hash_secret(token))
        if record is None or record.client_id != client.client_id:
            return None
        grant = auth_store.get_grant(record.grant_id)
        if grant is None:
            return None
        return record, grant

    @router.post(REVOKE_PATH, include_in_schema=False)
    async def revoke(request: Request) -> Response:
        try:
            client, auth_store, claims, value = await caller_and_token(request, "revoke")
            if claims is not None:
                await run_in_threadpool(auth_store.revoke, jti=claims.jti,
                                        until=float(claims.expires_at))
                log.info("client %s revoked access token %s", client.client_id, claims.jti)
                await record_auth_event(request, subtype="token-revoked", success=True,
                                        client_id=client.client_id, user=claims.fhir_user,
                                        patient=claims.patient, scopes=claims.scope.to_string(),
                                        detail="access token revoked by the client")
            else:
                found = await run_in_threadpool(own_refresh, value, client, auth_store)
                if found is not None:
                    # a refresh token stands for its grant: revoke the grant, its refresh
                    # tokens and every access token issued under it (`gid`)
                    now = clock()
                    if await run_in_threadpool(auth_store.revoke_grant, found[1].grant_id,
                                               now):
                        await record_grant_revoked(request, auth_store, found[1].grant_id,
                                                   "refresh token revoked by the client", now,
                                                   acting_client=client.client_id)
                    log.info("client %s revoked grant %s", client.client_id,
                             found[1].grant_id)
        except OAuthError as exc:
            return _error(exc, request)
        except _NotOpen:
            return _unavailable()
        except Exception:
            log.exception("revocation request failed")
            return _unavailable()
        return Response(b"", status_code=200, headers=NO_STORE)

    @router.post(INTROSPECT_PATH, include_in_schema=False)
    async def introspect(request: Request) -> Response:
        try:
            client, auth_store, claims, value = await caller_and_token(request, "introspect")
            found = None if claims is not None else await run_in_threadpool(
                own_refresh, value, client, auth_store)
        except OAuthError as exc:
            return _error(exc, request)
        except _NotOpen:
            return _unavailable()
        except Exception:
            log.exception("introspection request failed")
            return _unavailable()
        if claims is None and found is not None:
            record, grant = found
            now = clock()
            if record.used_at is not None or record.expires <= now or \
                    grant.revoked_at is not None:
                return _json({"active": False})
            refresh: dict[str, Any] = {
                "active": True, "scope": grant.scope, "client_id": client.client_id,
                "sub": grant.fhir_user, "iss": urls.issuer, "exp": int(record.expires),
                "token_type": "refresh_token", "fhirUser": f"{urls.fhir_base}/{grant.fhir_user}"}
            for name, v in (("patient", grant.patient), ("encounter", grant.encounter)):
                if v:
                    refresh[name] = v
            return _json(refresh)
        if claims is None:
            return _json({"active": False})
        jwt = claims.to_jwt()
        body: dict[str, Any] = {
            "active": True, "scope": jwt["scope"], "client_id": claims.client_id,
            "sub": claims.subject, "iss": claims.issuer, "aud": jwt["aud"],
            "iat": claims.issued_at, "exp": claims.expires_at, "jti": claims.jti,
            "token_type": "Bearer"}
        for name in ("nbf", "patient", "encounter", "fhirUser"):
            if name in jwt:
                body[name] = jwt[name]
        if "fhirUser" in body and not str(body["fhirUser"]).startswith(("http://", "https://")):
            body["fhirUser"] = f"{urls.fhir_base}/{body['fhirUser']}"  # SMART: an absolute URL
        return _json(body)

    return router

"""OAuth 2.0 authorization code (RFC 6749 §4.1) with PKCE S256 (RFC 7636) and refresh tokens
(RFC 6749 §6) for SMART App Launch 2.2 user flows, on Authlib 1.9.9's `AuthorizationServer`.

Authlib has no Starlette server integration (design §0), so this module is the adapter: a
`FormRequest` built from an already-parsed query or form, and a `SmartAuthorizationServer`
whose `handle_response` returns the raw `(status, body, headers)` triple for the routes to turn
into Starlette responses. Authlib is synchronous and calls our synchronous `AuthStore`: callers
run everything here in a threadpool.

Authlib defaults overridden for SMART (each has a test in tests/auth/test_security_flows.py):
- PKCE is required for every client, confidential ones included, and only `S256` is accepted:
  stock `CodeChallenge` returns silently when both `code_challenge` and `code_challenge_method`
  are absent, treats a missing method as `plain`, and requires the verifier only for
  `auth_method == "none"` (1.9.9 `rfc7636/challenge.py`).
- A code is consumed atomically when looked up (`AuthStore.consume_code`); a second use is
  `invalid_grant` AND revokes the grant with every token issued under it (RFC 6749 §4.1.2).
- Refresh tokens rotate on every use; a used one coming back revokes the grant (RFC 9700
  §4.14.2). A requested `scope` may only narrow, judged with SMART semantics (`scopes.within`,
  e.g. `patient/Observation.r` inside `patient/Observation.rs`), not Authlib's string subsets.
- The scope ceiling: `get_allowed_scope` keeps only what the client is registered for and never
  a `system/` scope (those are for backend services).
- The grant id, start and expiry can be chosen before the code is issued (`Approval.grant_id`,
  `new_grant_id`, `grant_expiry`): the approval page writes the grant's Consent first.
  Revocations made inside a token request (replayed code or refresh token) are listed in
  `SmartAuthorizationServer.revoked` for the token route to record (Consent, audit event).
- `InsecureTransportError.check` is not applied to the request URL: the public URL is our own
  `settings.base_url`, whose transport is the deployment's business (TLS ends at the proxy), and
  the tests run on `http://testserver`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7636 import CodeChallenge

from app.auth.bearer import issue_access_token
from app.auth.clients import verify_client_secret
from app.auth.keys import Keyring
from app.auth.oidc import SmartOpenIDCode
from app.auth.rfc7523_backend import JwksFetcher, OAuthError, check_client_assertion
from app.auth.scopes import ScopeSet, narrow, parse_scopes, within
from app.auth.sessions import ABSOLUTE_SECONDS, session_alive
from app.auth.store import AuthCode, AuthStore, Client, Grant, RefreshToken, hash_secret
from app.config import Settings

log = logging.getLogger("yilian.auth.grants")

AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"]
_METHOD_OF_KIND = {"public": ("none",), "symmetric": ("client_secret_basic",
                                                      "client_secret_post"),
                   "asymmetric": ("private_key_jwt",)}
REFRESH_SCOPES = ("offline_access", "online_access")


def user_scope(text: str | None, ceiling: str) -> ScopeSet:
    """`text` narrowed to a client's ceiling, without `system/` scopes or unparsable tokens."""
    requested = parse_scopes(text).scopes
    user_only = ScopeSet.of((s for s in requested.clinical if s.context != "system"),
                            requested.other)
    return narrow(user_only, parse_scopes(ceiling).scopes)


class SmartClient(ClientMixin):
    """Authlib's view of a registered client."""

    def __init__(self, client: Client) -> None:
        self.record = client
        self.client_id = client.client_id

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> str | None:
        # RFC 6749 §3.1.2.3: omitting redirect_uri is only unambiguous with one registered
        uris = self.record.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return user_scope(scope, self.record.scope).to_string()

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.record.redirect_uris  # exact string match only

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_client_secret(self.record, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in _METHOD_OF_KIND[self.record.kind]

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.record.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.record.grant_types


class FormRequest(OAuth2Request):
    """An `OAuth2Request` over parameters the route already parsed: the query of a GET
    `/authorize`, the form of a POST (credentials never come from a query string)."""

    def __init__(self, method: str, uri: str, headers: Mapping[str, str],
                 data: Mapping[str, str]) -> None:
        # OAuth2Request.__init__ without its transport check (see the module docstring)
        self.method = method
        self.uri = uri
        self.headers = headers  # case-insensitive (Starlette `Headers`)
        self._body = None
        self._data = dict(data)
        self.payload = BasicOAuth2Payload(self._data)
        self.client = None
        self.auth_method = None
        self.user = None
        self.authorization_code = None
        self.refresh_token = None
        self.credential = None
        self._scope = None

    @property
    def args(self) -> dict[str, str]:
        return self._data if self.method == "GET" else {}

    @property
    def form(self) -> dict[str, str]:
        return self._data if self.method == "POST" else {}


@dataclass(frozen=True)
class Approval:
    """What the user decided on the approval page: the `grant_user` Authlib hands to
    `save_authorization_code`."""

    username: str
    fhir_user: str
    session_hash: str
    patient: str | None
    encounter: str | None
    ehr_launch: bool
    auth_time: float
    # Chosen before the code is issued, so the grant's Consent (`app/consent`) can be written
    # first and name it: the grant id, its start and its expiry (`grant_expiry`).
    grant_id: str = ""
    granted_at: float | None = None
    expires: float | None = None


def new_grant_id() -> str:
    """A grant id: 128 random bits as 32 hex digits (also a valid FHIR id part, so the grant's
    Consent id can be derived from it)."""
    return secrets.token_hex(16)


def grant_expiry(scope: ScopeSet, now: float, *, offline_seconds: float,
                 session_seconds: float) -> float:
    """When a grant of `scope` made at `now` ends: `online_access` (without
    `offline_access`) lasts as long as a session can, anything else `offline_seconds`."""
    online = "online_access" in scope.other and "offline_access" not in scope.other
    return now + (session_seconds if online else offline_seconds)


@dataclass(frozen=True)
class GrantUser:
    """The user behind a code or refresh token, with the grant's launch context."""

    grant: Grant

    @property
    def fhir_user(self) -> str:
        return self.grant.fhir_user


class CodeRecord:
    """Authlib's `AuthorizationCodeMixin` over a stored code."""

    def __init__(self, code: AuthCode) -> None:
        self.record = code
        self.code_challenge = code.code_challenge
        self.code_challenge_method = code.code_challenge_method

    def get_redirect_uri(self) -> str | None:
        return self.record.redirect_uri or None

    def get_scope(self) -> str:
        return self.record.scope

    def get_nonce(self) -> str | None:
        return self.record.nonce

    def get_auth_time(self) -> int:
        return int(self.record.auth_time)

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class RefreshRecord:
    """Authlib's `TokenMixin` over a stored refresh token and its grant."""

    def __init__(self, token: RefreshToken, grant: Grant) -> None:
        self.record = token
        self.grant = grant

    def check_client(self, client: SmartClient) -> bool:
        return self.record.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.grant.scope


class S256CodeChallenge(CodeChallenge):
    """RFC 7636 with SMART's rules: S256 only, required for every client."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("code_challenge is required (PKCE with "
                                      "code_challenge_method=S256)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 (plain and a missing "
                                      "method are refused)")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("code_verifier is required")
        super().validate_code_verifier(grant, result)


class SmartCodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    server: SmartAuthorizationServer

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        server = self.server
        approval: Approval = request.user
        client: SmartClient = request.client
        now = approval.granted_at if approval.granted_at is not None else server.clock()
        scope = parse_scopes(request.scope).scopes
        online = "online_access" in scope.other and "offline_access" not in scope.other
        expires = approval.expires if approval.expires is not None else grant_expiry(
            scope, now, offline_seconds=server.offline_refresh_seconds,
            session_seconds=server.session_seconds)
        grant = Grant(grant_id=approval.grant_id or new_grant_id(),
                      client_id=client.get_client_id(),
                      username=approval.username, fhir_user=approval.fhir_user,
                      scope=scope.to_string(), created=now, expires=expires,
                      patient=approval.patient, encounter=approval.encounter,
                      ehr_launch=approval.ehr_launch,
                      session_hash=approval.session_hash if online else None)
        server.store.add_grant(grant)
        data = request.payload.data
        server.store.add_code(AuthCode(
            code_hash=hash_secret(code), client_id=grant.client_id,
            redirect_uri=request.payload.redirect_uri or "", grant_id=grant.grant_id,
            scope=grant.scope, expires=server.clock() + server.code_seconds,
            auth_time=approval.auth_time,
            nonce=data.get("nonce"), code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method")))

    def query_authorization_code(self, code: str, client: SmartClient) -> CodeRecord | None:
        store, now = self.server.store, self.server.clock()
        record, first_use = store.consume_code(hash_secret(code), now)
        if record is None:
            return None
        if not first_use:
            # RFC 6749 §4.1.2: a code used twice revokes what it issued
            self.server.revoke_grant(record.grant_id, "authorization code replayed")
            log.warning("authorization code replayed for client %s: grant %s revoked",
                        record.client_id, record.grant_id)
            return None
        if record.client_id != client.get_client_id():
            return None
        return CodeRecord(record)

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        pass  # consumed by query_authorization_code; kept to recognise replays

    def authenticate_user(self, authorization_code: CodeRecord) -> GrantUser | None:
        grant = self.server.store.get_grant(authorization_code.record.grant_id)
        if grant is None or grant.revoked_at is not None or not self.server.user_active(grant):
            return None
        return GrantUser(grant)


class SmartRefreshGrant(RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: SmartAuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        store, now = self.server.store, self.server.clock()
        record = store.get_refresh_token(hash_secret(refresh_token))
        if record is None:
            return None
        if record.used_at is not None:
            # a rotated token came back: stolen
            self.server.revoke_grant(record.grant_id, "used refresh token presented")
            log.warning("used refresh token presented for client %s: grant %s revoked",
                        record.client_id, record.grant_id)
            return None
        grant = store.get_grant(record.grant_id)
        if record.expires <= now or grant is None or grant.revoked_at is not None:
            return None
        if grant.session_hash is not None and not self.server.session_alive(grant.session_hash):
            return None  # online_access ends with the session
        if not self.server.user_active(grant):
            return None
        return RefreshRecord(record, grant)

    def _validate_token_scope(self, token: RefreshRecord) -> None:
        scope = self.request.payload.scope
        if not scope:
            return
        parsed = parse_scopes(scope)
        if parsed.invalid or not within(parsed.scopes, parse_scopes(token.get_scope()).scopes):
            raise InvalidScopeError("the requested scope is wider than the original grant; a "
                                    "refresh may only narrow it")

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("the client is not registered for refresh_token")
        value = self.request.form.get("refresh_token")
        if value is None:
            raise InvalidRequestError("refresh_token is required")
        token = self.authenticate_refresh_token(value)
        if token is None or not token.check_client(client):
            raise InvalidGrantError("the refresh token is invalid, expired, revoked or was "
                                    "issued to another client")
        self._validate_token_scope(token)
        self.request.client = client
        self.request.refresh_token = token

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        token: RefreshRecord = self.request.refresh_token
        store, now = self.server.store, self.server.clock()
        if not store.use_refresh_token(token.record.token_hash, now):
            # lost a race with another use
            self.server.revoke_grant(token.grant.grant_id, "refresh token used twice")
            raise InvalidGrantError("the refresh token was used already")
        user = GrantUser(token.grant)
        self.request.user = user
        requested = self.request.payload.scope
        scope = (parse_scopes(requested).scopes.to_string() if requested
                 else token.get_scope())
        result = self.generate_token(user=user, scope=scope, include_refresh_token=True)
        self.save_token(result)
        return 200, result, self.TOKEN_RESPONSE_HEADER

    def authenticate_user(self, refresh_token: RefreshRecord) -> GrantUser:
        return GrantUser(refresh_token.grant)

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        pass  # done atomically in create_token_response


class SmartAuthorizationServer(AuthorizationServer):
    """One per request (cheap): binds Authlib to this app's store, keyring and URLs."""

    def __init__(self, *, store: AuthStore, keyring: Keyring, issuer: str, fhir_base: str,
                 token_url: str, style_url: str, access_token_seconds: int, code_seconds: int,
                 offline_refresh_seconds: float, session_seconds: float,
                 session_alive: Callable[[str], bool], jwks_fetcher: JwksFetcher | None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.store = store
        self.keyring = keyring
        self.issuer = issuer
        self.fhir_base = fhir_base
        self.token_url = token_url
        self.style_url = style_url
        self.access_token_seconds = access_token_seconds
        self.code_seconds = code_seconds
        self.offline_refresh_seconds = offline_refresh_seconds
        self.session_seconds = session_seconds
        self.session_alive = session_alive
        self.jwks_fetcher = jwks_fetcher
        self.clock = clock
        # Grants this request revoked (a replayed code or refresh token) and why: the token
        # route records each one's revocation (Consent, audit) once Authlib has answered.
        self.revoked: list[tuple[str, str]] = []
        self.register_grant(SmartCodeGrant, [
            S256CodeChallenge(required=True),
            SmartOpenIDCode(keyring=keyring, issuer=issuer, fhir_base=fhir_base,
                            lifetime=access_token_seconds, clock=clock)])
        self.register_grant(SmartRefreshGrant)
        self.register_token_generator("default", self.generate_bearer_token)
        self.register_client_auth_method("private_key_jwt", self._private_key_jwt)

    def revoke_grant(self, grant_id: str, reason: str) -> None:
        """Revoke a grant now and remember it in `revoked` when this call revoked it."""
        if self.store.revoke_grant(grant_id, self.clock()):
            self.revoked.append((grant_id, reason))

    def user_active(self, grant: Grant) -> bool:
        """The grant's user still exists, is not disabled and is still the same person."""
        user = self.store.get_user(grant.username)
        return user is not None and not user.disabled and user.fhir_user == grant.fhir_user

    def query_client(self, client_id: str) -> SmartClient | None:
        client = self.store.get_client(client_id) if client_id else None
        return SmartClient(client) if client is not None else None

    def _private_key_jwt(self, query_client: Any, request: OAuth2Request) -> SmartClient | None:
        form = request.form
        if "client_assertion" not in form and "client_assertion_type" not in form:
            return None
        if self.jwks_fetcher is None:
            raise InvalidClientError(description="client assertions cannot be checked now")
        try:
            client = check_client_assertion(form, token_url=self.token_url, store=self.store,
                                            jwks_fetcher=self.jwks_fetcher, clock=self.clock)
        except OAuthError as exc:
            raise InvalidClientError(description=exc.description,
                                     status_code=exc.status_code) from None
        return SmartClient(client)

    def generate_bearer_token(self, grant_type: str, client: SmartClient,
                              user: GrantUser | None = None, scope: str | None = None,
                              expires_in: int | None = None,
                              include_refresh_token: bool = True) -> dict[str, Any]:
        assert user is not None
        grant = user.grant
        granted = parse_scopes(scope).scopes
        lifetime = self.access_token_seconds
        token: dict[str, Any] = {
            "access_token": issue_access_token(
                self.keyring, issuer=self.issuer, audience=self.fhir_base,
                client_id=client.get_client_id(), scope=granted, subject=grant.fhir_user,
                fhir_user=grant.fhir_user, patient=grant.patient, encounter=grant.encounter,
                lifetime=lifetime, grant_id=grant.grant_id, now=self.clock()),
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": granted.to_string(),
        }
        grant_scope = parse_scopes(grant.scope).scopes
        if include_refresh_token and client.check_grant_type("refresh_token") and any(
                s in grant_scope.other for s in REFRESH_SCOPES):
            token["refresh_token"] = secrets.token_urlsafe(32)
        # SMART App Launch 2.2 launch context in the token response
        if grant.patient:
            token["patient"] = grant.patient
        if grant.encounter:
            token["encounter"] = grant.encounter
        if "fhirUser" in granted.other:
            token["fhirUser"] = f"{self.fhir_base}/{grant.fhir_user}"
        token["need_patient_banner"] = not grant.ehr_launch
        token["smart_style_url"] = self.style_url
        return token

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        value = token.get("refresh_token")
        if not value:
            return
        grant: Grant = request.user.grant
        self.store.add_refresh_token(RefreshToken(
            token_hash=hash_secret(value), grant_id=grant.grant_id, client_id=grant.client_id,
            expires=grant.expires))

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return request  # always a FormRequest built by the routes

    def handle_response(self, status: int, body: Any, headers: Any,
                        ) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers or [])

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def build_server(*, store: AuthStore, keyring: Keyring, issuer: str, fhir_base: str,
                 settings: Settings, jwks_fetcher: JwksFetcher | None,
                 clock: Callable[[], float] = time.time) -> SmartAuthorizationServer:
    """The server for one request, with the lifetimes from the settings."""
    idle = settings.session_idle_minutes * 60.0
    return SmartAuthorizationServer(
        store=store, keyring=keyring, issuer=issuer, fhir_base=fhir_base,
        token_url=issuer + "/token", style_url=issuer + "/style.json",
        access_token_seconds=settings.access_token_seconds, code_seconds=settings.code_seconds,
        offline_refresh_seconds=settings.offline_refresh_days * 86400.0,
        session_seconds=float(ABSOLUTE_SECONDS),
        session_alive=lambda h: session_alive(store, h, idle, clock()),
        jwks_fetcher=jwks_fetcher, clock=clock)

"""OAuth 2.0 bearer access tokens on the resource server: RFC 6750 (usage) and RFC 9068 (JWT
profile), with SMART App Launch 2.2 launch-context claims.

`issue_access_token` mints an RFC 9068 token (`typ: at+jwt`) with the keyring; the token endpoint
calls it. `BearerVerifier.verify` takes an `Authorization` header value and returns the caller as a
`Principal`, or raises `BearerError` carrying the RFC 6750 §3.1 error code, the HTTP status and the
exact `WWW-Authenticate` value to send. Its descriptions are fixed phrases about the token the
client holds: never key ids, expected audiences, exception text or anything else from inside.

Claims (RFC 9068 §2.2): `iss`, `aud` (the FHIR base URL), `sub`, `client_id`, `scope`, `iat`, `exp`
(at most 3600 s after `iat`), `jti` (128 random bits), optional `nbf`; SMART context `patient`,
`encounter`, `fhirUser`; `gid`, the grant the token belongs to (revoking a grant revokes its
tokens).

A verified token is cached (LRU keyed by its SHA-256, bounded, each entry valid until the token's
`exp` or 60 s after it was verified, whichever is sooner), so a hot token pays the signature check
once a minute per process. Revocation is asked on every request, hit or miss: the `revoked`
callable is expected to be cheap (the auth store answers it from memory and re-reads only when
`PRAGMA data_version` says another connection committed, design §3).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.auth.keys import (
    InvalidTokenError,
    Keyring,
    MalformedTokenError,
    WrongTokenTypeError,
)
from app.auth.scopes import ScopeSet, parse_scopes
from app.definitions.registry import Registry, load_registry
from app.pipeline.hooks import Principal

log = logging.getLogger("yilian.auth.bearer")

ACCESS_TOKEN_TYPE = "at+jwt"  # RFC 9068 §2.1
MAX_LIFETIME_SECONDS = 3600
DEFAULT_LEEWAY_SECONDS = 30.0
CACHE_SECONDS = 60.0
DEFAULT_CACHE_SIZE = 50_000
DEFAULT_REALM = "yilian"
# Far above any token we issue (~1-2 kB with granular scopes); bounds the work on garbage.
MAX_TOKEN_LENGTH = 16_384

ErrorCode = Literal["invalid_request", "invalid_token", "insufficient_scope"]
STATUS: dict[ErrorCode | None, int] = {
    None: 401, "invalid_request": 400, "invalid_token": 401, "insufficient_scope": 403,
}

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6750 §3: realm is a quoted-string, error_description and scope exclude '"' and '\'.
_ATTR_VALUE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_CREDENTIALS = re.compile(r"(?P<scheme>[^ \t]+)(?P<sep>[ \t]*)(?P<rest>.*)", re.DOTALL)

# The only descriptions a client ever sees.
MALFORMED = "The access token is malformed"
NOT_OURS = "The access token was not issued by this server"
NOT_ACCESS_TOKEN = "The token is not an access token"
OTHER_AUDIENCE = "The access token is not meant for this server"
EXPIRED = "The access token expired"
NOT_YET_VALID = "The access token is not valid yet"
REVOKED = "The access token has been revoked"


class BearerError(Exception):
    """A request the resource server refuses (RFC 6750 §3).

    `error` is None when the request carried no bearer credentials at all (no header, or another
    scheme): §3.1 says to answer 401 with the challenge but without an error code. `reason` is for
    the server's log only (no token material in it); `description` is what the client sees.
    """

    def __init__(self, error: ErrorCode | None, description: str | None = None, *,
                 realm: str = DEFAULT_REALM, scope: str | None = None,
                 reason: str | None = None) -> None:
        for name, value in (("realm", realm), ("description", description), ("scope", scope)):
            if value is not None and not _ATTR_VALUE.fullmatch(value):
                raise ValueError(f"{name} {value!r} has characters a WWW-Authenticate "
                                 "attribute cannot carry")
        super().__init__(reason or description or "no bearer credentials")
        self.error = error
        self.description = description
        self.realm = realm
        self.scope = scope
        self.reason = reason or description or "no bearer credentials"

    @classmethod
    def insufficient_scope(cls, scope: str, *, realm: str = DEFAULT_REALM,
                           description: str = "The access token does not grant this access"
                           ) -> BearerError:
        """403 for a valid token whose scopes do not cover the request; `scope` names the scope
        that would (RFC 6750 §3.1)."""
        return cls("insufficient_scope", description, realm=realm, scope=scope)

    @property
    def status(self) -> int:
        return STATUS[self.error]

    @property
    def www_authenticate(self) -> str:
        parts = [f'realm="{self.realm}"']
        if self.error is not None:
            parts.append(f'error="{self.error}"')
            if self.description:
                parts.append(f'error_description="{self.description}"')
            if self.scope:
                parts.append(f'scope="{self.scope}"')
        return "Bearer " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class AccessTokenClaims:
    """The claims of one of our access tokens (RFC 9068 §2.2 + SMART launch context)."""

    issuer: str
    audience: tuple[str, ...]
    subject: str
    client_id: str
    scope: ScopeSet
    issued_at: int | float
    expires_at: int | float
    jti: str
    not_before: int | float | None = None
    grant_id: str | None = None
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None

    def to_jwt(self) -> dict[str, Any]:
        """The JWT claims set, with RFC/SMART claim names; absent optional claims are omitted."""
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience[0] if len(self.audience) == 1 else list(self.audience),
            "sub": self.subject, "client_id": self.client_id, "scope": self.scope.to_string(),
            "iat": self.issued_at, "exp": self.expires_at, "jti": self.jti,
        }
        optional = {"nbf": self.not_before, "gid": self.grant_id, "patient": self.patient,
                    "encounter": self.encounter, "fhirUser": self.fhir_user}
        claims.update({k: v for k, v in optional.items() if v is not None})
        return claims

    def principal(self) -> Principal:
        return Principal(
            subject=self.subject, client_id=self.client_id, scopes=tuple(self.scope.tokens()),
            anonymous=False, scope_set=self.scope, patient=self.patient,
            encounter=self.encounter, fhir_user=self.fhir_user, token_id=self.jti,
            grant_id=self.grant_id, expires_at=self.expires_at)


def issue_access_token(keyring: Keyring, *, issuer: str, audience: str, client_id: str,
                       scope: ScopeSet, subject: str, fhir_user: str | None = None,
                       patient: str | None = None, encounter: str | None = None,
                       lifetime: int = MAX_LIFETIME_SECONDS, grant_id: str | None = None,
                       now: float | None = None, not_before: int | None = None) -> str:
    """An RFC 9068 access token (`typ: at+jwt`) signed with the keyring's active `alg` key.

    `audience` is the FHIR base URL the token is for; `subject` the user's id or, for backend
    services, the client id; `lifetime` at most 3600 s (SMART backend services use 300).
    """
    for name, value in (("issuer", issuer), ("audience", audience), ("client_id", client_id),
                        ("subject", subject)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    for name, opt in (("fhir_user", fhir_user), ("patient", patient), ("encounter", encounter),
                      ("grant_id", grant_id)):
        if opt is not None and (not isinstance(opt, str) or not opt):
            raise ValueError(f"{name} must be None or a non-empty string, got {opt!r}")
    if not isinstance(scope, ScopeSet):
        raise TypeError(f"scope must be a ScopeSet, got {type(scope).__name__}")
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not (
            0 < lifetime <= MAX_LIFETIME_SECONDS):
        raise ValueError(f"lifetime must be 1..{MAX_LIFETIME_SECONDS} seconds, got {lifetime!r}")
    iat = int(time.time()) if now is None else int(now)
    if not_before is not None and not iat <= not_before < iat + lifetime:
        raise ValueError(f"not_before {not_before} must lie within the token's lifetime "
                         f"[{iat}, {iat + lifetime})")
    claims = AccessTokenClaims(
        issuer=issuer, audience=(audience,), subject=subject, client_id=client_id, scope=scope,
        issued_at=iat, expires_at=iat + lifetime, jti=secrets.token_urlsafe(16),
        not_before=not_before, grant_id=grant_id, patient=patient, encounter=encounter,
        fhir_user=fhir_user)
    return keyring.sign(claims.to_jwt(), typ=ACCESS_TOKEN_TYPE)


RevokedCheck = Callable[[str, str | None], bool]


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    until: float  # clock time after which the entry is stale


class BearerVerifier:
    """Turns `Authorization: Bearer <access token>` into a `Principal` (RFC 6750 §2.1, §3;
    RFC 9068 §4)."""

    def __init__(self, keyring: Keyring, *, issuer: str, audience: str,
                 revoked: RevokedCheck, clock: Callable[[], float] = time.time,
                 leeway: float = DEFAULT_LEEWAY_SECONDS, realm: str = DEFAULT_REALM,
                 cache_size: int = DEFAULT_CACHE_SIZE, cache_seconds: float = CACHE_SECONDS,
                 registry: Registry | None = None) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience must be non-empty")
        if leeway < 0 or cache_size < 0 or cache_seconds < 0:
            raise ValueError("leeway, cache_size and cache_seconds must be >= 0")
        if not _ATTR_VALUE.fullmatch(realm):
            raise ValueError(f"realm {realm!r} cannot be sent in a WWW-Authenticate header")
        self.keyring = keyring
        self.issuer = issuer
        self.audience = audience
        self.realm = realm
        self.leeway = leeway
        self._revoked = revoked
        self._clock = clock
        self._registry = registry if registry is not None else load_registry()
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._cache_size = cache_size
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()

    # -- the request -------------------------------------------------------------------------------

    def verify(self, authorization: str | None) -> Principal:
        """The principal the `Authorization` header value speaks for; raises `BearerError`."""
        token = self.token_from_header(authorization)
        if len(token) > MAX_TOKEN_LENGTH:
            raise self._error("invalid_token", MALFORMED,
                              f"token of {len(token)} characters (limit {MAX_TOKEN_LENGTH})")
        key = hashlib.sha256(token.encode("ascii")).digest()
        now = self._clock()
        principal = self._cached(key, now)
        if principal is None:
            claims = self.verify_token(token, now=now)
            principal = claims.principal()
            self._remember(key, principal, min(float(claims.expires_at),
                                               now + self._cache_seconds), now)
        self._check_revoked(key, principal)
        return principal

    def token_from_header(self, authorization: str | None) -> str:
        """The b64token of `Bearer <token>` (RFC 6750 §2.1); `BearerError` otherwise."""
        if authorization is None:
            raise self._error(None, None, "no Authorization header")
        value = authorization.strip(" \t")  # optional whitespace around a field value
        m = _CREDENTIALS.fullmatch(value)
        if m is None or m["scheme"].lower() != "bearer":
            scheme = m["scheme"][:20] if m else ""
            raise self._error(None, None, f"Authorization scheme {scheme!r} is not Bearer")
        if not m["rest"]:
            raise self._error("invalid_request", "The Bearer credentials carry no access token",
                              "Bearer without a token")
        if "\t" in m["sep"]:
            raise self._error("invalid_request",
                              "A single space must separate Bearer and the access token",
                              "tab after Bearer")
        token = m["rest"]
        if any(c in token for c in " \t,"):
            raise self._error("invalid_request", "Exactly one access token is allowed",
                              "several credentials after Bearer")
        if not _B64TOKEN.fullmatch(token):
            raise self._error("invalid_request",
                              "The access token contains characters that are not allowed",
                              "token outside the RFC 6750 b64token characters")
        return token

    def verify_token(self, token: str, *, now: float | None = None) -> AccessTokenClaims:
        """Check signature, `typ`, issuer, audience, times and claim types (not revocation, not
        the cache); `BearerError` (invalid_token) when anything is wrong."""
        now = self._clock() if now is None else now
        try:
            raw = self.keyring.verify(token, typ=ACCESS_TOKEN_TYPE)
        except WrongTokenTypeError as exc:
            raise self._error("invalid_token", NOT_ACCESS_TOKEN, str(exc)) from None
        except MalformedTokenError as exc:
            raise self._error("invalid_token", MALFORMED, str(exc)) from None
        except InvalidTokenError as exc:
            raise self._error("invalid_token", NOT_OURS, str(exc)) from None
        claims = self._claims(raw)
        if claims.issuer != self.issuer:
            raise self._error("invalid_token", NOT_OURS, f"iss {claims.issuer!r}")
        wanted = self.audience.rstrip("/")
        if not any(a.rstrip("/") == wanted for a in claims.audience):
            raise self._error("invalid_token", OTHER_AUDIENCE, f"aud {list(claims.audience)!r}")
        if claims.expires_at <= now - self.leeway:
            raise self._error("invalid_token", EXPIRED,
                              f"exp {claims.expires_at} is before now {now:.0f} - leeway")
        for name, at in (("nbf", claims.not_before), ("iat", claims.issued_at)):
            if at is not None and at > now + self.leeway:
                raise self._error("invalid_token", NOT_YET_VALID,
                                  f"{name} {at} is after now {now:.0f} + leeway")
        if claims.expires_at - claims.issued_at > MAX_LIFETIME_SECONDS:
            raise self._error("invalid_token", MALFORMED,
                              f"lifetime exp - iat = {claims.expires_at - claims.issued_at} s")
        return claims

    # -- internals ---------------------------------------------------------------------------------

    def _error(self, error: ErrorCode | None, description: str | None,
               reason: str) -> BearerError:
        log.debug("bearer credentials refused (%s): %s", error or "none", reason)
        return BearerError(error, description, realm=self.realm, reason=reason)

    def _claims(self, raw: Mapping[str, Any]) -> AccessTokenClaims:
        def text(name: str, *, required: bool = True) -> str | None:
            value = raw.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value:
                what = "missing" if value is None else "not a non-empty string"
                raise self._error("invalid_token", MALFORMED, f"claim {name!r} is {what}")
            return value

        def numeric_date(name: str, *, required: bool = True) -> int | float | None:
            value = raw.get(name)
            if value is None and not required:
                return None
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value)):
                what = "missing" if value is None else "not a NumericDate"
                raise self._error("invalid_token", MALFORMED, f"claim {name!r} is {what}")
            return value

        aud = raw.get("aud")
        audience = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
        if not audience or not all(isinstance(a, str) and a for a in audience):
            raise self._error("invalid_token", MALFORMED,
                              "claim 'aud' is missing or not a string / list of strings")
        scope_text = raw.get("scope")
        if not isinstance(scope_text, str):
            raise self._error("invalid_token", MALFORMED, "claim 'scope' is not a string")
        parsed = parse_scopes(scope_text, self._registry)
        if parsed.invalid:
            raise self._error("invalid_token", MALFORMED,
                              f"{len(parsed.invalid)} scope(s) do not parse, first: "
                              f"{parsed.invalid[0].reason}")
        issuer, subject, client_id, jti = (text(n) for n in ("iss", "sub", "client_id", "jti"))
        issued_at, expires_at = numeric_date("iat"), numeric_date("exp")
        assert issuer and subject and client_id and jti  # text() raised otherwise
        assert issued_at is not None and expires_at is not None
        return AccessTokenClaims(
            issuer=issuer, audience=audience, subject=subject, client_id=client_id,
            scope=parsed.scopes, issued_at=issued_at, expires_at=expires_at, jti=jti,
            not_before=numeric_date("nbf", required=False),
            grant_id=text("gid", required=False), patient=text("patient", required=False),
            encounter=text("encounter", required=False),
            fhir_user=text("fhirUser", required=False))

    def _cached(self, key: bytes, now: float) -> Principal | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if now >= entry.until:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return entry.principal

    def _remember(self, key: bytes, principal: Principal, until: float, now: float) -> None:
        if self._cache_size == 0 or until <= now:
            return
        with self._lock:
            self._cache[key] = _Entry(principal, until)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _check_revoked(self, key: bytes, principal: Principal) -> None:
        assert principal.token_id is not None
        if self._revoked(principal.token_id, principal.grant_id):
            with self._lock:
                self._cache.pop(key, None)
            raise self._error("invalid_token", REVOKED,
                              f"jti {principal.token_id} or grant {principal.grant_id} revoked")

    def cache_len(self) -> int:
        """How many verified tokens are cached (for tests and metrics)."""
        with self._lock:
            return len(self._cache)

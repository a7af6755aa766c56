"""Client registry: OAuth 2.0 clients of SMART apps and backend services (plan §5).

Follows RFC 6749 §3.1.2 and RFC 8252 §7.3 for redirect URIs (https, or http on a loopback host
for native and development apps; no fragment), RFC 7591 §2 for the metadata kept
(`redirect_uris`, `jwks` / `jwks_uri`, `grant_types`, `scope`, `client_name`, `launch_uri`) and
initial access tokens (§3). Redirect URIs are matched as exact strings: no prefix matching, no
normalisation — the registered string is the truth.

Secrets are 256-bit random values shown once and stored as SHA-256 (`store.hash_secret`).
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.auth.scopes import ScopeSet, parse_scopes
from app.auth.store import AuthStore, Client, ClientKind, RegistrationToken, hash_secret

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
USER_GRANTS: tuple[str, ...] = ("authorization_code", "refresh_token")
BACKEND_GRANTS: tuple[str, ...] = ("client_credentials",)
KNOWN_GRANTS = frozenset(USER_GRANTS + BACKEND_GRANTS)
# Ceilings when none is given: read-only, the smallest useful default.
DEFAULT_USER_SCOPE = ("openid fhirUser profile launch launch/patient launch/encounter "
                      "offline_access online_access patient/*.rs user/*.rs")
DEFAULT_BACKEND_SCOPE = "system/*.rs"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._~][A-Za-z0-9._~-]{0,127}")
_URI_MAX = 2000
_NAME_MAX = 200
# JWK members that only private or symmetric keys have (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class ClientError(ValueError):
    """Invalid client metadata; the message names the field and what was expected."""


def _check_uri(uri: str, what: str) -> None:
    """https, or http on a loopback host; absolute, no fragment, no userinfo."""
    if not uri or len(uri) > _URI_MAX:
        raise ClientError(f"{what} must be 1-{_URI_MAX} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in uri):
        raise ClientError(f"{what} {uri!r} contains whitespace or control characters")
    if "#" in uri:
        raise ClientError(f"{what} {uri!r} has a fragment (RFC 6749 §3.1.2 forbids one)")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ClientError(f"{what} {uri!r} is not a valid URL: {exc}") from None
    host = parts.hostname or ""
    if not host:
        raise ClientError(f"{what} {uri!r} is not an absolute URL with a host")
    if "@" in parts.netloc:
        raise ClientError(f"{what} {uri!r} contains user information ('@' before the host)")
    scheme = parts.scheme.lower()
    if scheme == "https":
        return
    if scheme == "http" and host in LOOPBACK_HOSTS:
        return  # RFC 8252 §7.3: loopback redirection for native and development apps
    raise ClientError(f"{what} {uri!r} must use https (http only on 127.0.0.1, [::1] or "
                      "localhost, RFC 8252 §7.3)")


def check_redirect_uri(uri: str) -> str:
    _check_uri(uri, "redirect_uri")
    return uri


def check_jwks_uri(uri: str) -> str:
    _check_uri(uri, "jwks_uri")
    return uri


def check_jwks(jwks: Any) -> dict[str, Any]:
    """A public JWK Set of RSA or EC keys, each with a `kid` (SMART Backend Services selects the
    key by the assertion's `kid`)."""
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list) \
            or not jwks["keys"]:
        raise ClientError('jwks must be a JSON object {"keys": [...]} with at least one key')
    kids: set[str] = set()
    for i, key in enumerate(jwks["keys"]):
        if not isinstance(key, Mapping):
            raise ClientError(f"jwks.keys[{i}] is not a JSON object")
        if key.get("kty") not in ("RSA", "EC"):
            raise ClientError(f"jwks.keys[{i}].kty is {key.get('kty')!r}; expected RSA or EC")
        private = sorted(_PRIVATE_JWK_MEMBERS & set(key))
        if private:
            raise ClientError(f"jwks.keys[{i}] holds private key material "
                              f"({', '.join(private)}); register the public key only")
        kid = key.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ClientError(f"jwks.keys[{i}] has no kid")
        if kid in kids:
            raise ClientError(f"jwks.keys[{i}].kid {kid!r} is not unique in the set")
        kids.add(kid)
    return dict(jwks)


def check_scope_ceiling(scope: str, grant_types: Iterable[str]) -> str:
    """Parse the ceiling with the SMART scope grammar; return it in canonical form.

    system/ scopes only make sense for client_credentials, patient/ and user/ scopes and the
    launch/identity scopes only for authorization_code: anything the client could never be
    granted is refused here rather than silently dropped later.
    """
    result = parse_scopes(scope)
    if result.invalid:
        raise ClientError("scope: " + "; ".join(f"{i.scope!r}: {i.reason}"
                                                for i in result.invalid))
    scopes: ScopeSet = result.scopes
    if not scopes.tokens():
        raise ClientError("scope is empty")
    grants = set(grant_types)
    if "client_credentials" not in grants:
        system = [str(s) for s in scopes.clinical if s.context == "system"]
        if system:
            raise ClientError(f"scope {' '.join(system)}: system/ scopes need a backend "
                              "services client (client_credentials)")
    if "authorization_code" not in grants:
        user = [str(s) for s in scopes.clinical if s.context != "system"] + sorted(scopes.other)
        if user:
            raise ClientError(f"scope {' '.join(user)}: a backend services client "
                              "(client_credentials only) can be granted system/ scopes only")
    return scopes.to_string()


def _check_name(name: str, what: str) -> str:
    name = name.strip()
    if not name or len(name) > _NAME_MAX:
        raise ClientError(f"{what} must be 1-{_NAME_MAX} characters")
    return name


def new_secret() -> str:
    """256 bits from the OS CSPRNG, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Registered:
    client: Client
    secret: str | None  # the client secret in clear, for symmetric clients; shown once


def register_client(store: AuthStore, *, name: str, kind: ClientKind,
                    redirect_uris: Iterable[str] = (), name_en: str | None = None,
                    client_id: str | None = None, launch_uri: str | None = None,
                    jwks: Any = None, jwks_uri: str | None = None, scope: str | None = None,
                    grant_types: Iterable[str] | None = None,
                    clock: Callable[[], float] = time.time) -> Registered:
    """Validate and store a client; the secret of a symmetric client is returned once."""
    name_zh = _check_name(name, "client name")
    name_en = _check_name(name_en, "English client name") if name_en is not None else name_zh
    uris = tuple(check_redirect_uri(u) for u in redirect_uris)
    if len(set(uris)) != len(uris):
        raise ClientError("redirect_uris lists the same URI twice")
    if launch_uri is not None:
        _check_uri(launch_uri, "launch_uri")
    if kind == "asymmetric":
        if (jwks is None) == (jwks_uri is None):
            raise ClientError("an asymmetric client needs exactly one of jwks and jwks_uri")
        jwks = check_jwks(jwks) if jwks is not None else None
        jwks_uri = check_jwks_uri(jwks_uri) if jwks_uri is not None else None
    elif jwks is not None or jwks_uri is not None:
        raise ClientError(f"jwks / jwks_uri are for asymmetric clients, not {kind} ones")
    if grant_types is None:
        grants = (USER_GRANTS if uris else ()) + (BACKEND_GRANTS if kind == "asymmetric" else ())
    else:
        grants = tuple(dict.fromkeys(grant_types))
    unknown = sorted(set(grants) - KNOWN_GRANTS)
    if unknown:
        raise ClientError(f"grant_types {unknown} are not supported; expected "
                          f"{', '.join(sorted(KNOWN_GRANTS))}")
    if not grants:
        raise ClientError("redirect_uri is required (or register an asymmetric backend "
                          "services client)")
    if "client_credentials" in grants and kind != "asymmetric":
        raise ClientError("client_credentials needs an asymmetric client (private_key_jwt, "
                          "SMART Backend Services)")
    if "authorization_code" in grants and not uris:
        raise ClientError("authorization_code needs at least one redirect_uri")
    if "authorization_code" not in grants and uris:
        raise ClientError("redirect_uris given but authorization_code is not a grant type")
    if scope is None:
        scope = " ".join(s for s, g in ((DEFAULT_USER_SCOPE, "authorization_code"),
                                        (DEFAULT_BACKEND_SCOPE, "client_credentials"))
                         if g in grants)
    ceiling = check_scope_ceiling(scope, grants)
    if client_id is None:
        client_id = secrets.token_hex(16)  # 128 bits; hex never starts with '-' (CLI options)
    elif not _CLIENT_ID.fullmatch(client_id):
        raise ClientError(f"client_id {client_id!r} must be 1-128 of A-Z a-z 0-9 . _ ~ - "
                          "(URL-unreserved), not starting with '-'")
    secret = new_secret() if kind == "symmetric" else None
    client = Client(client_id=client_id, kind=kind, name_zh=name_zh, name_en=name_en,
                    redirect_uris=uris, scope=ceiling, grant_types=grants,
                    secret_hash=hash_secret(secret) if secret is not None else None,
                    launch_uri=launch_uri, jwks=jwks, jwks_uri=jwks_uri, created=clock())
    store.add_client(client)
    return Registered(client, secret)


def redirect_uri_registered(client: Client, uri: str) -> bool:
    """Exact string match against the registered redirect URIs."""
    return uri in client.redirect_uris


def resolve_redirect_uri(client: Client, requested: str | None) -> str | None:
    """The redirect URI to use, or None when the request must be refused.

    Without a `redirect_uri` parameter only a client with exactly one registered URI has an
    unambiguous one (RFC 6749 §3.1.2.3).
    """
    if requested is None:
        return client.redirect_uris[0] if len(client.redirect_uris) == 1 else None
    return requested if redirect_uri_registered(client, requested) else None


def verify_client_secret(client: Client, secret: str) -> bool:
    """Constant-time comparison of the secret's hash with the stored one."""
    if client.kind != "symmetric" or client.secret_hash is None:
        return False
    return hmac.compare_digest(hash_secret(secret), client.secret_hash)


def issue_registration_token(store: AuthStore, *, uses: int, ttl_seconds: float,
                             clock: Callable[[], float] = time.time) -> str:
    """An RFC 7591 §3 initial access token: returned once, stored as SHA-256."""
    if uses < 1:
        raise ClientError("uses must be at least 1")
    if ttl_seconds <= 0:
        raise ClientError("ttl must be positive")
    token = new_secret()
    now = clock()
    store.add_registration_token(RegistrationToken(hash_secret(token), uses, now + ttl_seconds,
                                                   now))
    return token


def use_registration_token(store: AuthStore, token: str,
                           clock: Callable[[], float] = time.time) -> bool:
    return store.use_registration_token(hash_secret(token), clock())

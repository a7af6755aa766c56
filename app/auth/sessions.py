"""Browser sessions and CSRF protection for the sign-in and approval pages (plan §6).

Session: a 256-bit random id in the cookie `yilian_session` (HttpOnly, SameSite=Lax — Strict
would drop it on the app's top-level redirect to `/auth/authorize` — Path=/auth, Secure on
https); the store keeps only its SHA-256. Idle limit `settings.session_idle_minutes`, absolute
limit 12 h. `online_access` grants end with the session.

CSRF (OWASP "signed double-submit" / synchronizer token): every form carries
HMAC-SHA256(server secret, form name + session hash [+ authorization request id]); a token
made for one session, form or request is worthless for another. POSTs must also carry an
`Origin` equal to the issuer's origin when the browser sends one. The sign-in form has no
session yet: its token is bound to a random pre-session cookie `yilian_login`, so a
cross-site page cannot sign a victim into the attacker's account (login CSRF).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from app.auth.store import AuthStore, Session, User, hash_secret

SESSION_COOKIE = "yilian_session"
PRE_SESSION_COOKIE = "yilian_login"
COOKIE_PATH = "/auth"
ABSOLUTE_SECONDS = 12 * 3600
TOUCH_EVERY_SECONDS = 30.0  # write `last_seen` at most this often per session
_MAX_COOKIE = 128


def cookie_options(secure: bool, path: str = COOKIE_PATH,
                   max_age: int | None = None) -> dict[str, Any]:
    return {"path": path, "httponly": True, "samesite": "lax", "secure": secure,
            "max_age": max_age}


def new_secret_value() -> str:
    return secrets.token_urlsafe(32)


def open_session(store: AuthStore, user: User, now: float) -> str:
    """Start a session for `user`; the cookie value (returned) is never stored."""
    value = new_secret_value()
    store.add_session(Session(session_hash=hash_secret(value), username=user.username,
                              fhir_user=user.fhir_user, created=now, last_seen=now,
                              expires=now + ABSOLUTE_SECONDS))
    return value


def current_session(store: AuthStore, cookies: Mapping[str, str], idle_seconds: float,
                    now: float) -> Session | None:
    """The live session named by the request's cookie, touched; None when absent or over."""
    value = cookies.get(SESSION_COOKIE)
    if not value or len(value) > _MAX_COOKIE:
        return None
    session = store.get_session(hash_secret(value))
    if session is None:
        return None
    if session.expires <= now or session.last_seen + idle_seconds <= now:
        store.delete_session(session.session_hash)
        return None
    if now - session.last_seen >= TOUCH_EVERY_SECONDS:
        store.touch_session(session.session_hash, now)
    return session


def session_alive(store: AuthStore, session_hash: str, idle_seconds: float,
                  now: float) -> bool:
    session = store.get_session(session_hash)
    return (session is not None and session.expires > now
            and session.last_seen + idle_seconds > now)


def pre_session_binding(cookies: Mapping[str, str]) -> str | None:
    value = cookies.get(PRE_SESSION_COOKIE)
    if not value or len(value) > _MAX_COOKIE:
        return None
    return "pre:" + hash_secret(value)


class Csrf:
    """Form tokens: HMAC over the form's name and what it is bound to."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def token(self, form: str, *binding: str) -> str:
        message = "\x00".join((form, *binding)).encode("utf-8")
        mac = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def check(self, token: str | None, form: str, *binding: str) -> bool:
        if not token or len(token) > 64:
            return False
        return hmac.compare_digest(token, self.token(form, *binding))


def origin_allowed(headers: Mapping[str, str], issuer_origin: str) -> bool:
    """POSTs from our own pages only: `Origin`, when sent, must be the issuer's origin
    (`null` — sandboxed or privacy-redirected — is refused)."""
    origin = headers.get("origin")
    return origin is None or origin == issuer_origin

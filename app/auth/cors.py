"""Cross-origin access (Fetch standard CORS) for browser-based SMART apps.

A SMART app served from its own origin calls the FHIR API, the token endpoint and the discovery
documents with `fetch` (the `fhirclient` library does), so those answer CORS requests from any
origin. Credentials (cookies) are never allowed cross-origin: apps send bearer tokens, and the
login, approval and EHR-launch pages — the only places a session cookie matters — stay
same-origin (top-level navigations, which CORS does not govern).
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

# Where CORS applies: the FHIR API and the endpoints a browser app calls itself.
CORS_PREFIXES: tuple[str, ...] = ("/fhir/", "/auth/.well-known/")
CORS_PATHS = frozenset({"/fhir", "/auth/token", "/auth/revoke", "/auth/register", "/auth/jwks"})
ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Beyond the CORS-safelisted request headers: what FHIR and OAuth clients send.
ALLOW_HEADERS = ("Authorization", "Content-Type", "Accept", "Prefer", "If-Match",
                 "If-None-Match", "If-None-Exist", "If-Modified-Since", "X-Request-Id")
EXPOSE_HEADERS = ("Location", "ETag", "Last-Modified", "Content-Location", "WWW-Authenticate")
PREFLIGHT_MAX_AGE_SECONDS = 600


def cors_applies(path: str) -> bool:
    return path in CORS_PATHS or path.startswith(CORS_PREFIXES)


class SmartCors:
    """Starlette's `CORSMiddleware` (any origin, no credentials) on the paths `cors_applies`
    names; every other request goes straight to the application."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, allow_origins=["*"], allow_credentials=False,
                                   allow_methods=ALLOW_METHODS, allow_headers=ALLOW_HEADERS,
                                   expose_headers=EXPOSE_HEADERS,
                                   max_age=PREFLIGHT_MAX_AGE_SECONDS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and cors_applies(scope.get("path", "")):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)

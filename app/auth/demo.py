"""The `make run` demo of SMART authorization: demo accounts, a demo app and how to sign in.

On a start with `YILIAN_DEMO=true` (the default) `yilian serve` calls `seed_demo_auth`:

- when the auth store has no users yet, it adds `patient1` → the first demo patient,
  `patient2` → the second and `doctor1` → the first demo doctor (Practitioner; `access=all`),
  each with a random password, written to `<var>/demo-credentials.txt` (mode 0600) — never a
  fixed password, which would be a known login on every install that forgot to switch the demo
  off;
- every start, it makes sure the public client `yilian-demo` exists with the redirect URI of
  this server's origin (`<origin>/demo-app/`, launch URI `<origin>/demo-app/launch.html`), so a
  new port or host is followed.

The demo app (`/demo-app/`, `demo_app/index.html`) is a single page of vanilla JavaScript: it
reads `.well-known/smart-configuration`, runs the authorization code flow with PKCE S256
(`crypto.subtle`, available because 127.0.0.1 is a secure context) for a standalone launch, or
an EHR launch when opened as `launch.html?iss=…&launch=…`, exchanges the code, and shows the
patient and their latest Observations read with the access token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from app.auth.clients import ClientError, register_client
from app.auth.discovery import SmartEndpoints
from app.auth.passwords import Passwords
from app.auth.store import AuthStore, User

log = logging.getLogger("yilian.auth.demo")

DEMO_CLIENT_ID = "yilian-demo"
DEMO_CLIENT_NAME = ("医链演示应用", "Yilian demo app")
DEMO_CLIENT_SCOPE = ("openid fhirUser profile launch launch/patient offline_access "
                     "patient/*.rs user/*.rs")
CREDENTIALS_FILE = "demo-credentials.txt"
DEMO_APP_PATH = "/demo-app"
_PAGE = Path(__file__).with_name("demo_app") / "index.html"
_CONFIG_MARK = "/*__YILIAN_DEMO_CONFIG__*/{}"


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    fhir_user: str
    role: str  # how the printed instructions describe the account


@dataclass(frozen=True)
class DemoUrls:
    app: str  # the demo app; also its redirect URI
    launch: str  # its SMART launch URI (EHR launch)
    ehr: str  # Yilian's EHR launcher

    @classmethod
    def from_base_url(cls, base_url: str) -> DemoUrls:
        endpoints = SmartEndpoints.from_base_url(base_url)
        # Beside /auth: the server's origin and any proxy prefix.
        root = endpoints.issuer.removesuffix("/auth")
        return cls(app=root + DEMO_APP_PATH + "/", launch=root + DEMO_APP_PATH + "/launch.html",
                   ehr=endpoints.ehr_launch)


def demo_accounts() -> list[tuple[str, str, str]]:
    """(username, fhir_user, role) of the demo accounts, from the demo hospital's own ids."""
    from app.samples.hospital import HospitalGenerator

    gen = HospitalGenerator()
    first, second = (p["id"] for p in gen.patients(2))
    doctor = next(iter(gen.practitioners(1)))["id"]
    return [("patient1", f"Patient/{first}", "patient / 患者"),
            ("patient2", f"Patient/{second}", "patient / 患者"),
            ("doctor1", f"Practitioner/{doctor}", "doctor / 医生, EHR launch")]


def new_password() -> str:
    """16 characters from the URL-safe alphabet: ~96 bits, easy to copy from a terminal."""
    return secrets.token_urlsafe(12)


def seed_demo_users(store: AuthStore, credentials_path: Path, *,
                    passwords: Passwords | None = None,
                    clock: Callable[[], float] = time.time) -> list[DemoLogin]:
    """Add the demo accounts when the store has no user at all; write their passwords to
    `credentials_path` (0600). Returns the logins created (empty when users existed)."""
    if store.list_users():
        return []
    hasher = passwords or Passwords()
    logins = [DemoLogin(username, new_password(), fhir_user, role)
              for username, fhir_user, role in demo_accounts()]
    # The file first: an account whose password nobody can read would be useless.
    write_credentials(credentials_path, logins)
    for login in logins:
        store.add_user(User(
            username=login.username, password_hash=hasher.hash(login.password),
            fhir_user=login.fhir_user, locale="zh", created=clock(),
            access="all" if login.fhir_user.startswith("Practitioner/") else "compartment"))
    return logins


def write_credentials(path: Path, logins: Sequence[DemoLogin]) -> None:
    lines = ["# Yilian demo accounts (make run). Delete the users with `yilian users disable`",
             "# before putting real data on this server.",
             "# username\tpassword\tfhir_user\trole"]
    lines += [f"{x.username}\t{x.password}\t{x.fhir_user}\t{x.role}" for x in logins]
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def read_credentials(path: Path) -> list[DemoLogin]:
    """The logins of a credentials file written by `write_credentials` (empty when absent)."""
    try:
        text = path.read_text("utf-8")
    except OSError:
        return []
    logins = []
    for line in text.splitlines():
        fields = line.split("\t")
        if line.startswith("#") or len(fields) != 4:
            continue
        logins.append(DemoLogin(*fields))
    return logins


def ensure_demo_client(store: AuthStore, urls: DemoUrls,
                       clock: Callable[[], float] = time.time) -> bool:
    """Register `yilian-demo` for this origin (re-registering it when the origin changed);
    False when this origin cannot take an http redirect (not https and not loopback)."""
    existing = store.get_client(DEMO_CLIENT_ID)
    if existing is not None and existing.redirect_uris == (urls.app,) \
            and existing.launch_uri == urls.launch:
        return True
    if existing is not None:
        store.remove_client(DEMO_CLIENT_ID)
    try:
        register_client(store, name=DEMO_CLIENT_NAME[0], name_en=DEMO_CLIENT_NAME[1],
                        kind="public", client_id=DEMO_CLIENT_ID, redirect_uris=[urls.app],
                        launch_uri=urls.launch, scope=DEMO_CLIENT_SCOPE, clock=clock)
    except ClientError as exc:
        log.warning("demo app not registered: %s", exc)
        return False
    return True


def seed_demo_auth(store: AuthStore, base_url: str, var_dir: Path) -> list[str]:
    """What `yilian serve` does for the demo at each start; the lines to print."""
    urls = DemoUrls.from_base_url(base_url)
    credentials = var_dir / CREDENTIALS_FILE
    created = seed_demo_users(store, credentials)
    client_ok = ensure_demo_client(store, urls)
    logins = created or read_credentials(credentials)
    lines = ["SMART authorization demo (YILIAN_DEMO=false to skip):"]
    if client_ok:
        lines.append(f"  demo app (standalone launch): {urls.app}")
    else:
        lines.append(f"  demo app: not registered ({base_url} is neither https nor loopback)")
    lines.append(f"  EHR launcher (sign in as doctor1, pick the demo app): {urls.ehr}")
    if logins:
        lines.append(f"  logins (also in {credentials}):")
        lines += [f"    {x.username:<9} {x.password}  → {x.fhir_user} ({x.role})" for x in logins]
    else:
        lines.append(f"  logins: {credentials} is missing; set a password with "
                     "`yilian users passwd <username>`")
    return lines


def build_demo_app_router(base_url: str) -> APIRouter:
    """`GET /demo-app/` and `/demo-app/launch.html`: the demo app page, configured for this
    server. (TrailingSlash has turned `/demo-app/` into `/demo-app` before routing.)"""
    endpoints = SmartEndpoints.from_base_url(base_url)
    urls = DemoUrls.from_base_url(base_url)
    config = {"fhirBase": endpoints.fhir_base, "clientId": DEMO_CLIENT_ID,
              "redirectUri": urls.app, "ehrLauncher": urls.ehr,
              "standaloneScope": "launch/patient openid fhirUser patient/*.rs",
              "ehrScope": "launch openid fhirUser user/*.rs"}
    # `</` must not close the script element the JSON sits in.
    page = _PAGE.read_text("utf-8").replace(
        _CONFIG_MARK, orjson.dumps(config).decode().replace("</", "<\\/")).encode()
    headers = {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",  # the code is in the URL
        "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                                   "style-src 'unsafe-inline'; connect-src 'self'; "
                                   "frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
    }
    router = APIRouter()

    @router.get(DEMO_APP_PATH, include_in_schema=False)
    @router.get(DEMO_APP_PATH + "/launch.html", include_in_schema=False)
    async def demo_app() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    return router

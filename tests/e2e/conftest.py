"""Fixtures of the end-to-end tests: a real `yilian serve` with SMART on, the test SMART app on
another loopback origin, and the browser driver (`drive.mjs`, playwright-core + Debian's
Chromium, installed by `make e2e-deps`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry

from app.auth.clients import register_client
from app.auth.passwords import Passwords
from app.auth.sqlite_store import SqliteAuthStore
from app.auth.store import User
from tests.live_server import REPO, LiveServer

E2E_DIR = Path(__file__).resolve().parent
APP_DIR = E2E_DIR / "app"
FHIR_CLIENT_JS = REPO / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
PLAYWRIGHT = REPO / "node_modules" / "playwright-core" / "package.json"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = JWSRegistry(algorithms=["RS384", "ES384"])


def chromium_path() -> str:
    return os.environ.get("YILIAN_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def e2e_tools() -> None:
    """The browser tools exist; otherwise fail (not skip) with the command that installs them."""
    missing = [what for what, ok in (
        ("node", shutil.which("node") is not None),
        (f"Chromium at {chromium_path()}", Path(chromium_path()).exists()),
        ("node_modules/fhirclient", FHIR_CLIENT_JS.exists()),
        ("node_modules/playwright-core", PLAYWRIGHT.exists()),
    ) if not ok]
    if missing:
        pytest.fail(f"end-to-end tools missing: {', '.join(missing)}; run `make e2e-deps` "
                    "(apt-get install chromium as root, npm ci)")


# -- the Yilian server ------------------------------------------------------------------------


@dataclass
class SmartServer:
    """A `yilian serve` with YILIAN_AUTH=smart, and direct access to its auth store."""

    live: LiveServer
    backend_keys: dict[str, RSAKey | ECKey] = field(default_factory=dict)

    @property
    def fhir(self) -> str:
        return self.live.base_url

    @property
    def issuer(self) -> str:
        return self.live.root_url + "/auth"

    def store(self) -> SqliteAuthStore:
        return SqliteAuthStore.in_var_dir(self.live.var_dir)

    def add_user(self, username: str, password: str, fhir_user: str) -> None:
        user = User(username=username, password_hash=Passwords().hash(password),
                    fhir_user=fhir_user, created=time.time(),
                    access="all" if fhir_user.startswith("Practitioner/") else "compartment")
        with contextlib.closing(self.store()) as store:
            store.add_user(user)

    def add_public_app(self, client_id: str, name: str, redirect_uri: str, launch_uri: str,
                       scope: str) -> None:
        with contextlib.closing(self.store()) as store:
            register_client(store, name=name, kind="public", client_id=client_id,
                            redirect_uris=[redirect_uri], launch_uri=launch_uri, scope=scope)

    def add_backend_client(self, client_id: str, name: str, key: RSAKey | ECKey,
                           scope: str) -> None:
        with contextlib.closing(self.store()) as store:
            register_client(store, name=name, kind="asymmetric", client_id=client_id,
                            jwks={"keys": [key.as_dict(private=False)]}, scope=scope,
                            grant_types=["client_credentials"])
        self.backend_keys[client_id] = key

    def assertion(self, client_id: str, alg: str) -> str:
        """An RFC 7523 client assertion for the token endpoint, signed with the client's key."""
        key = self.backend_keys[client_id]
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": self.issuer + "/token",
                  "exp": now + 240, "iat": now, "jti": str(uuid.uuid4())}
        return jws.serialize_compact({"alg": alg, "kid": key.kid, "typ": "JWT"},
                                     json.dumps(claims), key, registry=ASSERTION_ALGS)

    def backend_token_response(self, client_id: str, alg: str, scope: str) -> httpx.Response:
        return httpx.post(self.issuer + "/token", data={
            "grant_type": "client_credentials", "scope": scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": self.assertion(client_id, alg)}, timeout=30)

    def backend_token(self, client_id: str, alg: str, scope: str) -> str:
        response = self.backend_token_response(client_id, alg, scope)
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token


LOADER = "e2e-loader"  # the hospital's data integration engine (集成平台), writes the test data


@pytest.fixture(scope="module")
def smart_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmartServer]:
    live = LiveServer(tmp_path_factory.mktemp("e2e") / "var", env={"YILIAN_AUTH": "smart"})
    with live:
        server = SmartServer(live)
        server.add_backend_client(LOADER, "医院集成平台", ECKey.generate_key(
            "P-384", parameters={"kid": "loader-ec"}), "system/*.cruds")
        yield server
        tracebacks = live.tracebacks()
        assert not tracebacks, "the server logged tracebacks:\n" + "\n".join(tracebacks)


@dataclass(frozen=True)
class Hospital:
    """What the test data holds: two patients, observations of the first, one encounter."""

    patient1: str
    patient2: str
    practitioner: str
    encounter: str
    observations_of_patient1: int


def _transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}


@pytest.fixture(scope="module")
def hospital(smart_server: SmartServer) -> Hospital:
    from app.samples.hospital import HospitalGenerator

    gen = HospitalGenerator()
    doctors = list(gen.practitioners())  # encounters name doctors of every department
    patients = list(gen.patients(2))
    p1 = patients[0]
    encounters = list(gen.encounters(p1, 2))
    observations = [_observation(p1["id"], i) for i in range(1, 26)]  # more than one page
    observations += [_observation(patients[1]["id"], i) for i in range(1, 4)]
    token = smart_server.backend_token(LOADER, "ES384", "system/*.cruds")
    bundle = _transaction([gen.organization(), *doctors, *patients, *encounters, *observations])
    response = httpx.post(smart_server.fhir, json=bundle, timeout=60, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
    assert response.status_code == 200, response.text[:2000]
    return Hospital(patient1=p1["id"], patient2=patients[1]["id"], practitioner=doctors[0]["id"],
                    encounter=encounters[0]["id"], observations_of_patient1=25)


def _observation(patient_id: str, n: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": f"e2e-{patient_id}-glu-{n:02d}", "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7",
                             "display": "Glucose [Mass/volume] in Serum or Plasma"}],
                 "text": "空腹血糖"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": f"2026-10-{n:02d}T08:00:00+08:00",
        "valueQuantity": {"value": 5.1 + n / 10, "unit": "mmol/L",
                          "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    }


# -- the SMART app on another origin ----------------------------------------------------------


class AppServer:
    """The test SMART app (launch.html, index.html) on its own loopback port, with fhirclient's
    browser build at /fhir-client.js and a per-test /config.js (client id, scope, iss)."""

    def __init__(self) -> None:
        self.config: dict[str, str] = {}
        handler = partial(_AppHandler, app=self)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def launch_uri(self) -> str:
        return self.origin + "/launch.html"

    @property
    def redirect_uri(self) -> str:
        return self.origin + "/index.html"


class _AppHandler(SimpleHTTPRequestHandler):
    def __init__(self, *args: Any, app: AppServer, **kwargs: Any) -> None:
        self.app = app
        super().__init__(*args, directory=str(APP_DIR), **kwargs)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/config.js":
            body = f"window.E2E_CONFIG = {json.dumps(self.app.config)};\n".encode()
            self._send(body, "text/javascript")
        elif path == "/fhir-client.js":
            self._send(FHIR_CLIENT_JS.read_bytes(), "text/javascript")
        elif path == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
        else:
            super().do_GET()

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype + "; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def app_server() -> Iterator[AppServer]:
    app = AppServer()
    app.thread.start()
    try:
        yield app
    finally:
        app.httpd.shutdown()
        app.httpd.server_close()


def drive(config: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
    """Run drive.mjs with `config`; its JSON report (`ok`, `result` or `error`, `trail`)."""
    env = {**os.environ, "YILIAN_CHROMIUM": chromium_path()}
    proc = subprocess.run(["node", str(E2E_DIR / "drive.mjs"), json.dumps(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"drive.mjs printed no report (exit {proc.returncode}); "
                             f"stderr:\n{proc.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report

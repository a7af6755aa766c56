"""Helpers for the SMART user-flow tests: a real app with SMART on, real users and clients in its
auth store, FHIR data written through the REST API, the real pages parsed with html.parser, and
a browser-like walk through authorize → sign-in → approval → code → token."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from app.auth.clients import register_client
from app.auth.passwords import Passwords
from app.auth.sqlite_store import SqliteAuthStore
from app.auth.store import User
from app.server import create_app
from tests.conftest import BASE, make_settings, patient

ISSUER = "http://testserver/auth"
AUTHORIZE = "/auth/authorize"
TOKEN = "/auth/token"
APP_ID = "jiankang-zhushou"  # 健康助手 (public patient app)
APP_REDIRECT = "https://jiankang.example.cn/callback"
CLINIC_ID = "menzhen-gongzuozhan"  # 门诊工作站 (confidential, symmetric)
CLINIC_REDIRECT = "https://menzhen.example.cn/oauth/callback"
CLINIC_LAUNCH = "https://menzhen.example.cn/launch"
PATIENT_USER, PATIENT_PASSWORD = "zhangsan", "张三的密码-2026"
DOCTOR_USER, DOCTOR_PASSWORD = "wangyisheng", "王医生-Secure-88"
OTHER_PATIENT_USER, OTHER_PATIENT_PASSWORD = "lisi", "李四的密码-2026"
PATIENT_SCOPE = ("launch/patient openid fhirUser offline_access patient/Patient.rs "
                 "patient/Observation.rs patient/Condition.rs")
PASSWORDS = Passwords()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
        .rstrip(b"=").decode()
    return verifier, challenge


def encounter(eid: str, pid: str, start: str) -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": eid, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB", "display": "门诊"},
            "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": start, "end": start}}


def seed_fhir(tmp_path: Path) -> None:
    """Two patients and their encounters, written with authorization off (same var dir)."""
    with TestClient(create_app(make_settings(tmp_path, auth="off"))) as c:
        for pid, family, given, idn, mrn in (
                ("pat-000001", "张", "三", "11010519491231002X", "BA2026001"),
                ("pat-000002", "李", "四", "110101199003074514", "BA2026002")):
            r = c.put(f"/fhir/Patient/{pid}", json=patient(pid, family=family, given=given,
                                                           id_number=idn, mrn=mrn))
            assert r.status_code in (200, 201), r.text
        for eid, pid, start in (("enc-0001", "pat-000001", "2026-11-02T09:30:00+08:00"),
                                ("enc-0002", "pat-000002", "2026-11-03T10:00:00+08:00")):
            r = c.put(f"/fhir/Encounter/{eid}", json=encounter(eid, pid, start))
            assert r.status_code in (200, 201), r.text


def auth_store(c: TestClient) -> SqliteAuthStore:
    app = c.app
    assert isinstance(app, FastAPI)
    store = app.state.auth_store
    assert isinstance(store, SqliteAuthStore)
    return store


@dataclass
class World:
    client: TestClient
    clinic_secret: str
    tmp_path: Path

    @property
    def store(self) -> SqliteAuthStore:
        return auth_store(self.client)


def seed_auth(c: TestClient) -> str:
    """Users and clients; returns the confidential client's secret."""
    store = auth_store(c)
    for username, password, fhir_user, access in (
            (PATIENT_USER, PATIENT_PASSWORD, "Patient/pat-000001", "compartment"),
            (OTHER_PATIENT_USER, OTHER_PATIENT_PASSWORD, "Patient/pat-000002", "compartment"),
            (DOCTOR_USER, DOCTOR_PASSWORD, "Practitioner/prac-0001", "all")):
        store.add_user(User(username=username, password_hash=PASSWORDS.hash(password),
                            fhir_user=fhir_user, access=access))  # type: ignore[arg-type]
    register_client(store, name="健康助手", name_en="Health Helper", kind="public",
                    client_id=APP_ID, redirect_uris=[APP_REDIRECT])
    registered = register_client(
        store, name="门诊工作站", name_en="Clinic Workstation", kind="symmetric",
        client_id=CLINIC_ID, redirect_uris=[CLINIC_REDIRECT], launch_uri=CLINIC_LAUNCH)
    assert registered.secret is not None
    return registered.secret


@contextmanager
def world(tmp_path: Path, **settings: Any) -> Iterator[World]:
    seed_fhir(tmp_path)
    with TestClient(create_app(make_settings(tmp_path, auth="smart", **settings))) as c:
        secret = seed_auth(c)
        yield World(c, secret, tmp_path)


# -- pages ---------------------------------------------------------------------------------

@dataclass
class Page:
    inputs: list[dict[str, str | None]] = field(default_factory=list)
    selects: dict[str, list[str]] = field(default_factory=dict)
    buttons: list[dict[str, str | None]] = field(default_factory=list)
    metas: list[dict[str, str | None]] = field(default_factory=list)
    forms: list[dict[str, str | None]] = field(default_factory=list)
    scripts: int = 0
    text: str = ""

    def value(self, name: str) -> str:
        for i in self.inputs:
            if i.get("name") == name:
                return i.get("value") or ""
        raise AssertionError(f"no input {name!r} on the page")

    def checkboxes(self, name: str = "scope") -> list[dict[str, str | None]]:
        return [i for i in self.inputs if i.get("type") == "checkbox" and i.get("name") == name]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._select: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input":
            self.page.inputs.append(a)
        elif tag == "select":
            self._select = a.get("name") or ""
            self.page.selects[self._select] = []
        elif tag == "option" and self._select is not None:
            self.page.selects[self._select].append(a.get("value") or "")
        elif tag == "button":
            self.page.buttons.append(a)
        elif tag == "meta":
            self.page.metas.append(a)
        elif tag == "form":
            self.page.forms.append(a)
        elif tag == "script":
            self.page.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = " ".join(t.strip() for t in self._text if t.strip())


def parse_page(html: str) -> Page:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.page


# -- the flow ------------------------------------------------------------------------------

def authorize_params(*, client_id: str = APP_ID, redirect_uri: str | None = APP_REDIRECT,
                     scope: str = PATIENT_SCOPE, challenge: str | None = None,
                     state: str | None = "state-7f3a", aud: str | None = BASE,
                     method: str | None = "S256", **extra: str) -> dict[str, str]:
    params = {"response_type": "code", "client_id": client_id, "scope": scope}
    for name, value in (("redirect_uri", redirect_uri), ("state", state), ("aud", aud),
                        ("code_challenge", challenge), ("code_challenge_method", method)):
        if value is not None:
            params[name] = value
    params.update(extra)
    return params


def start(c: TestClient, params: dict[str, str]) -> Response:
    return c.get(AUTHORIZE + "?" + urlencode(params), follow_redirects=False)


def sign_in(c: TestClient, login_url: str, username: str, password: str,
            headers: dict[str, str] | None = None) -> Response:
    page = parse_page(c.get(login_url).text)
    form = {"csrf": page.value("csrf"), "username": username, "password": password}
    for hidden in ("req", "next"):
        try:
            value = page.value(hidden)
        except AssertionError:
            continue
        form[hidden] = value
    return c.post("/auth/login", data=form, headers=headers or {}, follow_redirects=False)


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def approval_page(c: TestClient, params: dict[str, str], username: str,
                  password: str) -> tuple[str, Page]:
    """authorize → (sign in) → the approval page: its URL and parsed page."""
    r = start(c, params)
    assert r.status_code == 303, r.text
    approve_url = path_of(r.headers["location"])
    r = c.get(approve_url, follow_redirects=False)
    if r.status_code == 303:
        assert "/auth/login" in r.headers["location"]
        r = sign_in(c, path_of(r.headers["location"]), username, password)
        assert r.status_code == 303, r.text
        r = c.get(path_of(r.headers["location"]), follow_redirects=False)
    assert r.status_code == 200, r.text
    return approve_url, parse_page(r.text)


def approve(c: TestClient, page: Page, *, scopes: list[str] | None = None,
            decision: str = "approve", extra: dict[str, str] | None = None,
            headers: dict[str, str] | None = None) -> Response:
    ticked = [str(b["value"]) for b in page.checkboxes() if "checked" in b] \
        if scopes is None else scopes
    form: list[tuple[str, str]] = [("csrf", page.value("csrf")), ("req", page.value("req")),
                                   ("decision", decision)]
    form += [("scope", s) for s in ticked]
    for name, options in page.selects.items():
        if extra is None or name not in extra:
            chosen = next((o for o in options if o), "")
            form.append((name, chosen))
    form += list((extra or {}).items())
    return c.post("/auth/approve", content=urlencode(form),
                  headers={"content-type": "application/x-www-form-urlencoded",
                           **(headers or {})}, follow_redirects=False)


def code_from(response: Response, redirect_uri: str = APP_REDIRECT) -> str:
    assert response.status_code in (302, 303), response.text
    location = response.headers["location"]
    assert location.startswith(redirect_uri + "?"), location
    query = parse_qs(urlsplit(location).query)
    assert "error" not in query, query
    return query["code"][0]


def redirect_query(response: Response) -> dict[str, list[str]]:
    return parse_qs(urlsplit(response.headers["location"]).query)


def exchange(c: TestClient, code: str, verifier: str | None, *, client_id: str = APP_ID,
             redirect_uri: str = APP_REDIRECT, auth: tuple[str, str] | None = None,
             **extra: str) -> Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier is not None:
        form["code_verifier"] = verifier
    if auth is None:
        form["client_id"] = client_id
    form.update(extra)
    if auth is None:
        return c.post(TOKEN, data=form)
    return c.post(TOKEN, data=form, auth=auth)


def full_flow(c: TestClient, *, username: str = PATIENT_USER, password: str = PATIENT_PASSWORD,
              scope: str = PATIENT_SCOPE, client_id: str = APP_ID,
              redirect_uri: str = APP_REDIRECT, scopes: list[str] | None = None,
              **extra: str) -> tuple[str, str]:
    """(code, verifier) after a complete sign-in and approval."""
    verifier, challenge = pkce()
    params = authorize_params(client_id=client_id, redirect_uri=redirect_uri, scope=scope,
                              challenge=challenge, **extra)
    _, page = approval_page(c, params, username, password)
    return code_from(approve(c, page, scopes=scopes), redirect_uri), verifier


def sign_out(c: TestClient) -> None:
    c.cookies.clear()


BAD_TEXT = re.compile(r"Traceback|Exception|sqlite", re.IGNORECASE)


def flow_tokens(w: World, **kw: Any) -> dict[str, Any]:
    """A whole launch (`full_flow`) and its code exchanged: the token response."""
    code, verifier = full_flow(w.client, **kw)
    r = exchange(w.client, code, verifier)
    assert r.status_code == 200, r.text
    return dict(r.json())


def refresh_with(c: TestClient, token: str, client_id: str = APP_ID, **extra: str) -> Response:
    return c.post(TOKEN, data={"grant_type": "refresh_token", "refresh_token": token,
                               "client_id": client_id, **extra})

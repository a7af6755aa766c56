"""End to end: what `make run` offers, on a real `yilian serve` with the demo on and SMART on —
the printed logins work in the demo app (standalone launch as a patient) and through the EHR
launcher (a doctor launches the demo app for a patient and an encounter), in headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.auth.bearer import issue_access_token
from app.auth.demo import CREDENTIALS_FILE, DemoLogin, read_credentials
from app.auth.keys import Keyring
from app.auth.scopes import parse_scopes
from tests.e2e.conftest import drive
from tests.e2e.test_smart_launch import _explain
from tests.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_tools")]

DONE = "#status.error, #out h2 ~ h2"  # an error, or the patient shown after the token


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    var = tmp_path_factory.mktemp("demo") / "var"
    with LiveServer(var, env={"YILIAN_AUTH": "smart", "YILIAN_DEMO": "true"}) as server:
        yield server


def _logins(server: LiveServer) -> dict[str, DemoLogin]:
    return {x.username: x for x in read_credentials(server.var_dir / CREDENTIALS_FILE)}


def test_make_run_prints_logins_whose_fhir_users_exist(demo_server: LiveServer) -> None:
    log = demo_server.log_text()
    logins = _logins(demo_server)
    assert list(logins) == ["patient1", "patient2", "doctor1"]
    for login in logins.values():
        assert f"{login.username:<9} {login.password}" in log
    assert f"{demo_server.root_url}/demo-app/" in log
    assert f"{demo_server.root_url}/auth/ehr" in log
    assert "authorization is OFF" not in log
    keyring = Keyring(Path(demo_server.var_dir) / "keys", "RS256")
    token = issue_access_token(keyring, issuer=demo_server.root_url + "/auth",
                               audience=demo_server.base_url, client_id="demo-check",
                               scope=parse_scopes("system/*.rs").scopes, subject="demo-check",
                               lifetime=300)
    with demo_server.client(headers={"Authorization": f"Bearer {token}"}) as fhir:
        for login in logins.values():
            assert fhir.get(login.fhir_user).status_code == 200, login.fhir_user


def test_demo_app_standalone_launch_as_patient1(demo_server: LiveServer) -> None:
    patient1 = _logins(demo_server)["patient1"]
    report = drive({"start": demo_server.root_url + "/demo-app/", "startClick": "#standalone",
                    "appOrigin": demo_server.root_url + "/demo-app", "doneSelector": DONE,
                    "username": patient1.username, "password": patient1.password})
    assert report["ok"], _explain(report)
    text = report["result"]["text"]
    assert patient1.fhir_user.removeprefix("Patient/") in text, text
    assert "Latest observations (40)" in text, text
    assert "need_patient_banner\ttrue" in text, text


def test_demo_app_ehr_launch_by_doctor1(demo_server: LiveServer) -> None:
    doctor1 = _logins(demo_server)["doctor1"]
    report = drive({"start": demo_server.root_url + "/auth/ehr",
                    "appOrigin": demo_server.root_url + "/demo-app", "doneSelector": DONE,
                    "username": doctor1.username, "password": doctor1.password,
                    "ehr": {"client_id": "yilian-demo", "patient": "pat-000002",
                            "encounter": "enc-000002-01"}})
    assert report["ok"], _explain(report)
    text = report["result"]["text"]
    assert "patient\tpat-000002" in text, text
    assert "encounter\tenc-000002-01" in text, text
    assert "need_patient_banner\tfalse" in text, text
    assert "Encounter enc-000002-01" in text, text

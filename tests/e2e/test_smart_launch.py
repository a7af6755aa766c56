"""End to end: real SMART launches against `yilian serve` with SMART on.

The browser scenarios run the SMART project's own JavaScript client (npm `fhirclient` 2.6.3,
its browser build) in a test app served from another loopback origin (so CORS is exercised),
in Debian's headless Chromium driven by playwright-core (`drive.mjs`): the user signs in and
approves on Yilian's real pages. The backend-services scenario needs no browser: a real RS384
and a real ES384 key sign the client assertions.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey, RSAKey

from tests.e2e.conftest import LOADER, AppServer, Hospital, SmartServer, drive

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_tools")]

STANDALONE_SCOPE = ("launch/patient openid fhirUser offline_access patient/Patient.rs "
                    "patient/Observation.rs")
EHR_SCOPE = "launch openid fhirUser user/*.rs"
PASSWORD = "Yilian-e2e-密码-2026!"


def _count(server: SmartServer, query: str) -> int:
    token = server.backend_token(LOADER, "ES384", "system/*.cruds")
    response = httpx.get(f"{server.fhir}/{query}", timeout=30,
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


def _explain(report: dict[str, Any]) -> str:
    return (f"error: {report.get('error')}\nurl: {report.get('url')}\n"
            f"page: {report.get('text')}\ntrail: {report.get('trail')}\n"
            f"console: {report.get('console')}\nresult: {report.get('result')}")


# -- (a) SMART Backend Services ---------------------------------------------------------------


@pytest.mark.parametrize(("alg", "key"), [
    ("RS384", RSAKey.generate_key(2048, parameters={"kid": "pingan-claims-rsa"})),
    ("ES384", ECKey.generate_key("P-384", parameters={"kid": "taikang-claims-ec"})),
])
def test_backend_services_with_signed_assertion(smart_server: SmartServer, hospital: Hospital,
                                                alg: str, key: RSAKey | ECKey) -> None:
    client_id = f"insurer-{alg.lower()}"
    smart_server.add_backend_client(client_id, "保险公司 理赔核查", key, "system/Patient.rs")
    response = smart_server.backend_token_response(client_id, alg, "system/Patient.rs")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/Patient.rs"
    assert isinstance(body["expires_in"], int) and 0 < body["expires_in"] <= 300
    auth = {"Authorization": f"Bearer {body['access_token']}"}

    read = httpx.get(f"{smart_server.fhir}/Patient/{hospital.patient1}", headers=auth,
                     timeout=30)
    assert read.status_code == 200, read.text
    assert read.json()["id"] == hospital.patient1

    ungranted = httpx.get(f"{smart_server.fhir}/Observation?patient={hospital.patient1}",
                          headers=auth, timeout=30)
    assert ungranted.status_code == 403, ungranted.text[:500]
    assert ungranted.json()["resourceType"] == "OperationOutcome"

    anonymous = httpx.get(f"{smart_server.fhir}/Patient/{hospital.patient1}", timeout=30)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")


def test_backend_assertion_is_single_use(smart_server: SmartServer) -> None:
    assertion = smart_server.assertion(LOADER, "ES384")
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}
    first = httpx.post(smart_server.issuer + "/token", data=form, timeout=30)
    assert first.status_code == 200, first.text
    replay = httpx.post(smart_server.issuer + "/token", data=form, timeout=30)
    assert replay.status_code in (400, 401)
    assert replay.json()["error"] == "invalid_client"


# -- (b), (c) standalone patient launch -------------------------------------------------------


def _standalone(smart_server: SmartServer, app_server: AppServer, *, client_id: str,
                username: str, patient: str, deselect: tuple[str, ...] = ()) -> dict[str, Any]:
    smart_server.add_public_app(client_id, "健康助手 (测试)", app_server.redirect_uri,
                                app_server.launch_uri, STANDALONE_SCOPE)
    smart_server.add_user(username, PASSWORD, f"Patient/{patient}")
    app_server.config = {"clientId": client_id, "scope": STANDALONE_SCOPE,
                         "iss": smart_server.fhir}
    report = drive({"start": app_server.launch_uri, "appOrigin": app_server.origin,
                    "username": username, "password": PASSWORD, "deselect": list(deselect)})
    assert report["ok"], _explain(report)
    result: dict[str, Any] = report["result"]
    assert "error" not in result, _explain(report)
    return result


def test_standalone_patient_launch_with_fhirclient(smart_server: SmartServer,
                                                   app_server: AppServer,
                                                   hospital: Hospital) -> None:
    result = _standalone(smart_server, app_server, client_id="e2e-standalone",
                         username="zhangwei-e2e", patient=hospital.patient1)
    assert result["patientId"] == hospital.patient1
    assert result.get("patient") == {"resourceType": "Patient", "id": hospital.patient1}, result
    expected = _count(smart_server, f"Observation?patient={hospital.patient1}&_summary=count")
    assert expected == hospital.observations_of_patient1
    assert "observationError" not in result, result
    assert len(result["observationIds"]) == expected
    assert len(set(result["observationIds"])) == expected
    assert all(i.startswith(f"e2e-{hospital.patient1}-") for i in result["observationIds"])
    assert result["fhirUser"] == f"Patient/{hospital.patient1}"
    granted = set(result["tokenResponse"]["scope"].split())
    assert {"launch/patient", "openid", "fhirUser", "offline_access", "patient/Patient.rs",
            "patient/Observation.rs"} <= granted
    assert result["tokenResponse"]["patient"] == hospital.patient1
    assert result["tokenResponse"]["need_patient_banner"] is True
    assert result["hasIdToken"] and result["hasRefreshToken"]


def test_limited_access_deselected_type_gets_403(smart_server: SmartServer,
                                                 app_server: AppServer,
                                                 hospital: Hospital) -> None:
    result = _standalone(smart_server, app_server, client_id="e2e-limited",
                         username="lina-e2e", patient=hospital.patient2,
                         deselect=("patient/Observation.rs",))
    granted = set(result["tokenResponse"]["scope"].split())
    assert "patient/Patient.rs" in granted
    assert not any(s.startswith("patient/Observation") for s in granted), granted
    assert result.get("patient") == {"resourceType": "Patient", "id": hospital.patient2}, result
    assert "observationIds" not in result, result
    assert result["observationError"]["status"] == 403, result


# -- (d) EHR launch ---------------------------------------------------------------------------


def test_ehr_launch_with_fhirclient(smart_server: SmartServer, app_server: AppServer,
                                    hospital: Hospital) -> None:
    client_id = "e2e-ehr"
    smart_server.add_public_app(client_id, "临床决策支持 (测试)", app_server.redirect_uri,
                                app_server.launch_uri, EHR_SCOPE)
    smart_server.add_user("doctor-wang-e2e", PASSWORD, f"Practitioner/{hospital.practitioner}")
    app_server.config = {"clientId": client_id, "scope": EHR_SCOPE}
    report = drive({"start": smart_server.issuer + "/ehr", "appOrigin": app_server.origin,
                    "username": "doctor-wang-e2e", "password": PASSWORD,
                    "ehr": {"client_id": client_id, "patient": hospital.patient1,
                            "encounter": hospital.encounter}})
    assert report["ok"], _explain(report)
    result = report["result"]
    assert "error" not in result, _explain(report)
    assert result["encounterId"] == hospital.encounter
    assert result["patientId"] == hospital.patient1
    assert result["tokenResponse"]["need_patient_banner"] is False
    assert result["fhirUser"] == f"Practitioner/{hospital.practitioner}"
    assert result.get("encounter", {}).get("subject") == f"Patient/{hospital.patient1}", result
    assert "observationError" not in result, result

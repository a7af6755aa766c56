"""Shared fixtures: a Yilian server on a fresh SQLite file per test, and Chinese hospital data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from web3 import Web3

from app.chain.devchain import DevChain
from app.config import Settings
from app.server import create_app

pytest_plugins = ("tests.live_server",)

BASE = "http://testserver/fhir"
ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"  # 居民身份证号
MRN_SYSTEM = "urn:oid:2.16.156.10011.1.13"  # 病案号


def make_settings(tmp_path: Path, **kw: Any) -> Settings:
    """Settings of a test server. Authorization is off unless a test asks for `auth="smart"`:
    the FHIR suites test the REST behaviour; tests/auth tests its enforcement."""
    kw.setdefault("auth", "off")
    kw.setdefault("chain", "off")
    return Settings(var_dir=tmp_path / "var", base_url=BASE, **kw)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as c:
        yield c


def patient(pid: str | None = None, *, family: str = "张", given: str = "三",
            id_number: str = "11010519491231002X", gender: str = "male",
            birth: str = "1949-12-31", mrn: str = "BA2026001") -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": ID_SYSTEM, "value": id_number},
                       {"system": MRN_SYSTEM, "value": mrn}],
        "name": [{"use": "official", "text": family + given, "family": family,
                  "given": [given]}],
        "gender": gender,
        "birthDate": birth,
        "telecom": [{"system": "phone", "value": "13800138000", "use": "mobile"}],
        "address": [{"city": "北京市", "district": "西城区", "line": ["西长安街1号"]}],
    }
    if pid:
        res["id"] = pid
    return res


def lab(patient_id: str, *, loinc: str = "6690-2", display: str = "白细胞计数",
        value: float = 6.5, unit: str = "10*9/L", when: str = "2026-11-20T08:30:00+08:00",
        oid: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": display}],
                 "text": display},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                          "code": unit},
    }
    if oid:
        res["id"] = oid
    return res


def condition(patient_id: str, code: str = "E11.900", display: str = "2型糖尿病",
              onset: str = "2025-03-01") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "code": "active"}]},
        "code": {"coding": [{"system": "urn:oid:2.16.156.10011.2.3.3.11", "code": code,
                             "display": display}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "onsetDateTime": onset,
    }


FHIR_JSON = {"Content-Type": "application/fhir+json"}


# A dev chain (anvil from node_modules) per test session, for the chain and audit suites; each
# test deploys the contracts it needs, so tests never see each other's entries.
@pytest.fixture(scope="session")
def chain() -> Iterator[DevChain]:
    with DevChain() as dev:
        yield dev


@pytest.fixture(scope="session")
def w3(chain: DevChain) -> Web3:
    w3 = Web3(Web3.HTTPProvider(chain.url))
    assert w3.is_connected()
    return w3

"""Every dataset round-trips through the API: imported with `POST /fhir/$import-cn`, each resource
reads back by id exactly as search returns it, validates (`$validate`) against the CN profile it
declares, and a PUT of what was read changes nothing but the version."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.server import create_app
from tests.cnemr import test_importer
from tests.cnemr.test_export_styles import CASES, HOSPITAL
from tests.conftest import FHIR_JSON, make_settings

PATIENT_COUNTS = {"Patient": 3}
# resource types fhir_profiles/ has a cn-* profile for (staff's have none)
PROFILED_TYPES = {"Patient", "Encounter", "Condition", "Observation", "DiagnosticReport",
                  "MedicationRequest", "Procedure", "Composition", "Claim", "Coverage",
                  "DocumentReference"}


def exports(tmp: Path) -> dict[str, tuple[str, Path, dict[str, int]]]:
    """Each dataset's WS 363-style export: (mapping, file, resources expected by type)."""
    out = {"patient": ("patient-ws363", test_importer.ws363_file(tmp), PATIENT_COUNTS)}
    for dataset, case in CASES.items():
        style = case.styles[0]
        folder = tmp / dataset
        folder.mkdir()
        out[dataset] = (style.mapping.removesuffix(".yaml"), style.write(folder, case.facts),
                        case.counts)
    return out


def import_parameters(dataset: str, mapping: str, path: Path) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "dataset", "valueCode": dataset},
        {"name": "mapping", "valueString": mapping},
        {"name": "hospitalOid", "valueString": HOSPITAL.oid},
        {"name": "file", "valueAttachment": {
            "contentType": "text/csv", "title": path.name,
            "data": base64.b64encode(path.read_bytes()).decode()}}]}


def errors(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in outcome["issue"] if i["severity"] in ("error", "fatal")]


def without_version(resource: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in resource.get("meta", {}).items()
            if k not in ("versionId", "lastUpdated")}
    return {**resource, "meta": meta}


@pytest.mark.parametrize("dataset", ["patient", *sorted(CASES)])
def test_each_dataset_imports_over_http_reads_back_and_validates_against_its_profile(
        tmp_path: Path, dataset: str) -> None:
    mapping, path, counts = exports(tmp_path)[dataset]
    with TestClient(create_app(make_settings(tmp_path))) as client:
        r = client.post("/fhir/$import-cn", json=import_parameters(dataset, mapping, path),
                        headers=FHIR_JSON)
        assert r.status_code == 200, r.text
        out = {p["name"]: p for p in r.json()["parameter"]}
        assert out["rowsRejected"]["valueInteger"] == 0, r.text
        assert out["resourcesWritten"]["valueInteger"] >= sum(counts.values())
        profiled = 0
        for rtype, expected in counts.items():
            page = client.get(f"/fhir/{rtype}", params={"_count": "200"}).json()
            assert page["total"] == expected, (rtype, page["total"])
            for entry in page["entry"]:
                found = entry["resource"]
                read = client.get(f"/fhir/{rtype}/{found['id']}")
                assert read.status_code == 200
                assert read.json() == found
                assert read.headers["ETag"] == f'W/"{found["meta"]["versionId"]}"'
                for profile in found["meta"].get("profile", []):
                    profiled += 1
                    check = client.get(f"/fhir/{rtype}/{found['id']}/$validate",
                                       params={"profile": profile})
                    assert check.status_code == 200
                    assert errors(check.json()) == [], (rtype, found["id"], check.json())
                again = client.put(f"/fhir/{rtype}/{found['id']}", json=read.json(),
                                   headers=FHIR_JSON)
                assert again.status_code == 200, again.text
                stored = client.get(f"/fhir/{rtype}/{found['id']}").json()
                assert stored["meta"]["versionId"] == str(int(found["meta"]["versionId"]) + 1)
                assert without_version(stored) == without_version(found)
        if set(counts) & PROFILED_TYPES:
            assert profiled > 0, f"no {dataset} resource declares a CN profile"

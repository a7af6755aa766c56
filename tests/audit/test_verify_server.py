"""The verifier against a real `yilian serve` with its dev chain (issue 5): a morning of realistic
traffic is anchored by the server's own worker, then checked from outside — `yilian audit
verify` on the store file, `$verify` over HTTP, and a scan of the whole chain for personal data —
and an administrator's edits to the database are found."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.audit.conftest import PATIENTS, consent_resource, observation_resource, patient_resource
from tests.audit.test_no_personal_data import failures, personal_needles, scan_chain
from tests.live_server import FHIR_JSON, REPO, LiveServer

pytestmark = pytest.mark.slow


def wait_anchored(server: LiveServer, timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(server.root_url + "/chain/status", timeout=10).json()
        if status["outbox_total"] == 0 and status["batches_sent"] == 0:
            return dict(status)
        if time.monotonic() > deadline:
            raise AssertionError(f"not anchored within {timeout}s: {status}")
        time.sleep(0.2)


def audit_verify(var_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify",
                           "--var-dir", str(var_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_servers_trail_verifies_holds_nothing_personal_and_shows_tampering(
        tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    with LiveServer(var_dir, env={"YILIAN_CHAIN": "dev"}) as server, server.client() as fhir:
        people = [patient_resource(*p) for p in PATIENTS]
        for resource in [*people, observation_resource("obs-wbc-20261122", "p-zhangwei", 6.5),
                         consent_resource("c-zhangwei-his", "p-zhangwei")]:
            resource = {k: v for k, v in resource.items() if k != "meta"}
            answer = fhir.put(f"{resource['resourceType']}/{resource['id']}", json=resource,
                              headers=FHIR_JSON)
            assert answer.status_code in (200, 201), answer.text
        for pid, *_ in PATIENTS:
            assert fhir.get(f"Patient/{pid}").status_code == 200
        assert fhir.get("Observation", params={"subject": "Patient/p-zhangwei"}).status_code == 200
        assert fhir.get("Patient", params={"name": "王芳"}).status_code == 200
        status = wait_anchored(server)

        done = audit_verify(var_dir)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "missing 0, altered 0, extra 0" in done.stdout

        events = fhir.get("AuditEvent", params={"patient": "Patient/p-wangfang"}).json()
        event_id = events["entry"][0]["resource"]["id"]
        verdict = fhir.get(f"AuditEvent/{event_id}/$verify").json()
        assert verdict["parameter"][0] == {"name": "verified", "valueBoolean": True}

        findings = scan_chain(str(status["rpc_url"]), [
            *personal_needles(people), "obs-wbc-20261122", "c-zhangwei-his", "白细胞计数"])
        assert failures(findings) == [], "\n".join(map(str, findings))

        with sqlite3.connect(var_dir / "audit.sqlite3", timeout=30) as db:
            db.execute("UPDATE audit SET body = replace(body, '\"outcome\":\"0\"', "
                       "'\"outcome\":\"4\"') WHERE id = ?", (event_id,))
        with sqlite3.connect(var_dir / "yilian.sqlite3", timeout=30) as db:
            db.execute("UPDATE history SET body = replace(body, '6.5', '4.5') WHERE rid = "
                       "(SELECT rid FROM resource WHERE id = 'obs-wbc-20261122')")
        done = audit_verify(var_dir)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"altered: AuditEvent/{event_id}" in done.stdout
        assert "altered: Observation/obs-wbc-20261122/_history/1" in done.stdout
        verdict = fhir.get("Observation/obs-wbc-20261122/_history/1/$verify").json()
        assert verdict["parameter"][0] == {"name": "verified", "valueBoolean": False}

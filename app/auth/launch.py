"""Launch context (SMART App Launch 2.2 §"Launch context"): the patients and encounters the
pickers offer, and EHR launch ids.

EHR launch: a signed-in practitioner picks an app, a patient and optionally an encounter on
`/auth/ehr`; we store a single-use, 5-minute launch bound to that user, app, patient and
encounter (hashed, like every secret) and send the browser to the app's registered
`launch_uri?iss=<FHIR base>&launch=<id>`. The app's authorization request then carries
`launch=<id>` and the context comes from it (`need_patient_banner: false`).

The pickers read the FHIR store directly (`Store.search`), not through the FHIR interaction
pipeline: they are the authorization server's own internal reads, made for a signed-in user
before any token exists. What they show is bounded: a patient user only ever sees their own
encounters; practitioners see every patient (`access=all`, plan §6, until a care-team policy).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from app.auth.store import AuthStore, Launch, hash_secret
from app.fhir.interactions import FhirService
from app.search.query import parse_search

LAUNCH_SECONDS = 300
PICKER_LIMIT = 50


@dataclass(frozen=True)
class Choice:
    id: str
    label: str
    patient: str | None = None  # for encounters: the subject's Patient id


def _patient_label(body: dict[str, Any]) -> str:
    for name in body.get("name") or []:
        text = name.get("text") or (name.get("family", "") + "".join(name.get("given") or []))
        if text:
            return f"{text}（{body.get('birthDate', '')}）" if body.get("birthDate") else text
    return str(body.get("id", ""))


def _encounter_label(body: dict[str, Any]) -> str:
    start = (body.get("period") or {}).get("start", "")[:10]
    kinds = [t.get("text") or next((c.get("display") for c in t.get("coding") or []
                                    if c.get("display")), "") for t in body.get("type") or []]
    cls = (body.get("class") or {}).get("display") or (body.get("class") or {}).get("code", "")
    what = next((k for k in kinds if k), cls) or "Encounter"
    subject = (body.get("subject") or {}).get("reference", "")
    return " ".join(p for p in (start, what, subject, body.get("id", "")) if p)


def _subject_id(body: dict[str, Any]) -> str | None:
    ref = (body.get("subject") or {}).get("reference", "")
    return ref.split("/", 1)[1] if ref.startswith("Patient/") else None


async def _search(service: FhirService, rtype: str,
                  params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    query, _ = parse_search((rtype,), params, service.parse_ctx)
    page = await service.store.search(query)
    return [orjson.loads(v.body) for v in page.matches if v.body]


_IDENTIFIER_TEXT = re.compile(r"[0-9A-Za-z]*[0-9][0-9A-Za-z]*")  # has a digit: not a name


async def list_patients(service: FhirService, text: str | None = None,
                        limit: int = PICKER_LIMIT) -> list[Choice]:
    """Patients for a picker: `text` is a name (汉字 or pinyin, as the `name` search takes it) or,
    when it looks like one, an identifier value (身份证号, 病案号) of any system."""
    params = [("_count", str(limit))]
    text = (text or "").strip()[:64]
    if text:
        params.append(("identifier" if _IDENTIFIER_TEXT.fullmatch(text) else "name", text))
    return [Choice(b["id"], _patient_label(b)) for b in await _search(service, "Patient", params)]


async def list_encounters(service: FhirService, patient: str | None = None,
                          limit: int = PICKER_LIMIT) -> list[Choice]:
    params = [("_count", str(limit))]
    if patient is not None:
        params.append(("subject", f"Patient/{patient}"))
    return [Choice(b["id"], _encounter_label(b), _subject_id(b))
            for b in await _search(service, "Encounter", params)]


async def patient_exists(service: FhirService, patient_id: str) -> bool:
    if not patient_id or len(patient_id) > 64:
        return False
    return bool(await _search(service, "Patient", [("_id", patient_id)]))


async def encounter_patient(service: FhirService, encounter_id: str) -> str | None:
    """The Patient id an encounter belongs to; None when there is no such encounter."""
    if not encounter_id or len(encounter_id) > 64:
        return None
    found = await _search(service, "Encounter", [("_id", encounter_id)])
    return _subject_id(found[0]) if found else None


def create_launch(store: AuthStore, *, username: str, client_id: str, patient: str,
                  encounter: str | None, now: float) -> str:
    """A new launch id (returned once; stored hashed)."""
    value = secrets.token_urlsafe(24)
    store.add_launch(Launch(launch_hash=hash_secret(value), username=username,
                            client_id=client_id, patient=patient, encounter=encounter,
                            expires=now + LAUNCH_SECONDS))
    return value


def take_launch(store: AuthStore, value: str, client_id: str, now: float) -> Launch | None:
    """Consume a launch id for `client_id`; None when unknown, used, expired or another
    app's."""
    if not value or len(value) > 128:
        return None
    launch = store.consume_launch(hash_secret(value), now)
    if launch is None or launch.client_id != client_id:
        return None
    return launch

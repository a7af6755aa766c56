"""FHIR AuditEvents of Yilian's interactions (R4 AuditEvent, DICOM/FHIR audit codes).

One AuditEvent per patient an interaction touched (IHE BALP: a search returning the records of
three patients is three AuditEvents, so each patient's list of accesses is complete), plus one
for whatever touched no patient. The builders are plain dict code: every read of the server
makes one, so they stay cheap.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from app.audit.hashing import PATIENT_KEY_URL
from app.pipeline.hooks import Interaction, Principal
from app.storage.base import StoredVersion

AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
AUTH_EVENTS = "https://fhir.yilian.cn/CodeSystem/auth-event"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
CLIENT_SYSTEM = "https://fhir.yilian.cn/sid/smart-client"
NODE_SYSTEM = "https://fhir.yilian.cn/sid/node"

REST_TYPE = {"system": AUDIT_TYPE, "code": "rest", "display": "RESTful Operation"}
AUTH_TYPE = {"system": DCM, "code": "110114", "display": "User Authentication"}

# Interaction kinds (app/pipeline/hooks.py) -> (restful-interaction code, AuditEvent.action)
_KINDS: dict[str, tuple[str, str]] = {
    "read": ("read", "R"),
    "vread": ("vread", "R"),
    "history-instance": ("history-instance", "R"),
    "history-type": ("history-type", "E"),
    "history-system": ("history-system", "E"),
    "search-type": ("search-type", "E"),
    "search-system": ("search-system", "E"),
    "create": ("create", "C"),
    "update": ("update", "U"),
    "patch": ("patch", "U"),
    "delete": ("delete", "D"),
    "operation": ("operation", "E"),
    "bundle": ("transaction", "E"),
    "capabilities": ("capabilities", "E"),
}

# SMART auth events -> AuditEvent.action
AUTH_SUBTYPES: dict[str, tuple[str, str]] = {
    "token-issued": ("Access token issued", "E"),
    "token-refreshed": ("Access token refreshed", "E"),
    "token-revoked": ("Token revoked", "D"),
    "authorization-approved": ("Authorization approved", "C"),
    "authorization-denied": ("Authorization denied", "E"),
}


def action_of(interaction: Interaction) -> tuple[str, str]:
    """(restful-interaction code, AuditEvent.action) of an interaction."""
    return _KINDS.get(interaction.kind, (interaction.kind, "E"))


def outcome_of(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (the client's), 8 serious (ours)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def purpose_of(principal: Principal) -> str:
    """v3-ActReason: what the access was for, as far as the grant tells.

    A patient's own app: PATRQT (patient requested); a clinician's: TREAT; a backend service or
    the server's own tools: HOPERAT (healthcare operations). Insurers' HPAYMT comes with their
    consents (a later issue).
    """
    user = principal.fhir_user or principal.subject or ""
    if user.startswith("Patient/"):
        return "PATRQT"
    if user.startswith(("Practitioner/", "PractitionerRole/")):
        return "TREAT"
    return "HOPERAT"


def agents(principal: Principal) -> list[dict[str, Any]]:
    """The user (requestor, with the network address) and the client application."""
    user = principal.fhir_user or principal.subject
    network = {"address": principal.address, "type": "2"} if principal.address else None
    out: list[dict[str, Any]] = []
    first: dict[str, Any] = {"requestor": True}
    if user:
        if "/" in user and not user.startswith("system/"):
            first["who"] = {"reference": user}
        else:
            first["who"] = {"identifier": {"system": NODE_SYSTEM, "value": user}}
    elif principal.anonymous:
        first["who"] = {"display": "anonymous"}
    if network:
        first["network"] = network
    out.append(first)
    if principal.client_id:
        out.append({"type": {"coding": [{"system": PARTICIPATION, "code": "DEV",
                                         "display": "device"}]},
                    "who": {"identifier": {"system": CLIENT_SYSTEM,
                                           "value": principal.client_id}},
                    "requestor": False})
    return out


def version_ref(v: StoredVersion) -> str:
    return f"{v.type}/{v.id}/_history/{v.version}"


def entity_of(ref: str) -> dict[str, Any]:
    """A version touched, by its Type/id/_history/version reference."""
    return {"what": {"reference": ref},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}}


def patient_entity(patient_id: str) -> dict[str, Any]:
    return {"what": {"reference": f"Patient/{patient_id}"},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}}


def rest_event(id_: str, recorded: str, interaction: Interaction, status: int,
               principal: Principal, patient: str | None, patient_key: bytes,
               refs: Sequence[str], source: str, query: str | None,
               detail: str | None) -> dict[str, Any]:
    """A RESTful interaction's AuditEvent; `refs`: Type/id/_history/version of every version
    it returned or wrote (`version_ref`)."""
    code, action = action_of(interaction)
    subtype = [{"system": RESTFUL, "code": code}]
    if interaction.operation:
        subtype.append({"system": "https://fhir.yilian.cn/CodeSystem/operation",
                        "code": interaction.operation})
    entity: list[dict[str, Any]] = []
    if patient:
        entity.append(patient_entity(patient))
    if query is not None:
        target = interaction.resource_type or "system"
        entity.append({"type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                       "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                       "description": target,
                       "query": base64.b64encode(query.encode()).decode()})
    elif interaction.resource_type and not refs:
        ref = interaction.resource_type + (f"/{interaction.resource_id}"
                                           if interaction.resource_id else "")
        entity.append({"what": {"reference": ref},
                       "type": {"system": ENTITY_TYPE, "code": "2",
                                "display": "System Object"}})
    entity.extend(entity_of(ref) for ref in refs)
    return _event(id_, recorded, REST_TYPE, subtype, action, status, principal, patient,
                  patient_key, entity, source, detail)


def auth_event(id_: str, recorded: str, subtype: str, success: bool, principal: Principal,
               patient: str | None, patient_key: bytes, source: str, scopes: str | None,
               detail: str | None) -> dict[str, Any]:
    display, action = AUTH_SUBTYPES[subtype]
    entity: list[dict[str, Any]] = []
    if patient:
        entity.append(patient_entity(patient))
    if scopes:
        entity.append({"type": {"system": ENTITY_TYPE, "code": "2",
                                "display": "System Object"},
                       "role": {"system": OBJECT_ROLE, "code": "13",
                                "display": "Security Resource"},
                       "description": f"scope: {scopes}"})
    return _event(id_, recorded, AUTH_TYPE,
                  [{"system": AUTH_EVENTS, "code": subtype, "display": display}], action,
                  200 if success else 401, principal, patient, patient_key, entity, source,
                  detail)


def _event(id_: str, recorded: str, type_: dict[str, str], subtype: list[dict[str, str]],
           action: str, status: int, principal: Principal, patient: str | None,
           patient_key: bytes, entity: list[dict[str, Any]], source: str,
           detail: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": id_,
        "type": type_,
        "subtype": subtype,
        "action": action,
        "recorded": recorded,
        "outcome": outcome_of(status),
        "purposeOfEvent": [{"coding": [{"system": ACT_REASON, "code": purpose_of(principal)}]}],
        "agent": agents(principal),
        "source": {"observer": {"display": source},
                   "type": [{"system": SOURCE_TYPE, "code": "4",
                             "display": "Application Server"}]},
    }
    if status >= 400:
        event["outcomeDesc"] = f"HTTP {status}" + (f": {detail}" if detail else "")
    if entity:
        event["entity"] = entity
    if patient:
        event["extension"] = [{"url": PATIENT_KEY_URL, "valueString": patient_key.hex()}]
    return event

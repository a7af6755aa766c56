"""FHIR R4 Consent resources (http://hl7.org/fhir/R4/consent.html) that record a user's SMART
App Launch authorization decision for one app: approved, denied, and later revoked.

One Consent per decision on the approval page (`app/auth/authorize.py`):

- approved: `status` active, `policyRule` v3-ActCode OPTIN, one top `provision` of type permit
  whose `period` runs from the approval to the grant's expiry and whose `actor` is the app
  (role v3-ParticipationType IRCP, information recipient; reference by identifier
  `https://fhir.yilian.cn/sid/smart-client|<client_id>`, display the app's name), with one nested
  permit per granted clinical scope and one nested deny per requested scope the user deselected;
  `identifier` `https://fhir.yilian.cn/sid/smart-grant|<grant id>` and id `smart-grant-<grant id>`
  (`consent_id_for_grant`), so a revocation finds it from the grant alone.
- denied: `status` rejected, `policyRule` OPTOUT, a top deny provision naming the app, with one
  nested deny per requested clinical scope.
- revoked (grant revoked on `/auth/manage`, its refresh token revoked at `/auth/revoke`, a
  replayed code or refresh token): the next version of the approval's Consent with `status`
  inactive and the top provision's period ending at the revocation.

Every Consent has `scope` consentscope#patient-privacy, `category` LOINC 59284-0 (Patient
Consent), `patient`, `dateTime` (the decision), `performer` (the signed-in user's `fhirUser`:
the patient, or the practitioner who authorized the app for them) and `organization` (the
patient's managing organization) when known. R4 invariant ppc-2 requires a patient for a
patient-privacy Consent, so an authorization without a patient in context (a practitioner's
`user/` scopes across patients) is not a patient's consent and writes none; its approval is
still an audited authorization event.

A nested provision per clinical scope: `class` the resource type
(http://hl7.org/fhir/resource-types; none for `*`), `action` consentaction#access (and #correct
when the scope also writes: c, u or d), for a category-narrowed scope
(`patient/Observation.rs?category=<system>|<code>`) the category as `code`, and the exact scope
text in the extension `SMART_SCOPE_URL`, which `app/consent/chain.py` turns into the on-chain
scope key. Pure functions: the FHIR writes are in `app/consent/smart.py`.
"""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from app.auth.scopes import ClinicalScope, ScopeSet
from app.search.dates import date_range_ms

GRANT_SYSTEM = "https://fhir.yilian.cn/sid/smart-grant"
CLIENT_SYSTEM = "https://fhir.yilian.cn/sid/smart-client"
SMART_SCOPE_URL = "https://fhir.yilian.cn/StructureDefinition/smart-scope"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
LOINC = "http://loinc.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
CONSENT_ID_PREFIX = "smart-grant-"
# Search parameters whose `system|code` values become provision.code (SMART 2.2 and US Core
# narrow Observation and Condition by category).
CODED_QUERY_PARAMS = ("category",)
WRITE_PERMISSIONS = frozenset("cud")


def consent_id_for_grant(grant_id: str) -> str:
    """The id of the Consent recording `grant_id` (grant ids are 32 hex digits)."""
    return CONSENT_ID_PREFIX + grant_id


def fhir_datetime(at: float) -> str:
    """Unix seconds as a FHIR dateTime in UTC, to the second."""
    return datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)]}


def display_text(text: str | None) -> str:
    """`text` as an R4 string for display: no control or format characters (R4 strings allow
    none below U+0020 but tab and line breaks), single spaces, trimmed."""
    kept = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in text or "")
    return " ".join(kept.split())


def app_actor(client_id: str, client_name: str | None) -> dict[str, Any]:
    """The app as the information recipient (IRCP) of a provision."""
    reference: dict[str, Any] = {"identifier": {"system": CLIENT_SYSTEM, "value": client_id}}
    display = display_text(client_name)
    if display:
        reference["display"] = display
    return {"role": _concept(PARTICIPATION_TYPE, "IRCP", "information recipient"),
            "reference": reference}


def scope_provision(scope: ClinicalScope, kind: str) -> dict[str, Any]:
    """The nested provision (`kind` permit or deny) for one clinical scope."""
    actions = [_concept(CONSENT_ACTION, "access", "Access")]
    if WRITE_PERMISSIONS & set(scope.permissions):
        actions.append(_concept(CONSENT_ACTION, "correct", "Access and Correct"))
    provision: dict[str, Any] = {
        "extension": [{"url": SMART_SCOPE_URL, "valueString": str(scope)}],
        "type": kind,
        "action": actions,
    }
    if scope.resource_type != "*":
        provision["class"] = [_coding(RESOURCE_TYPES, scope.resource_type)]
    codes = []
    for name, value in scope.query:
        if name not in CODED_QUERY_PARAMS:
            continue
        for one in value.split(","):
            system, bar, code = one.rpartition("|")
            if not code:
                continue
            codes.append({"coding": [{"system": system, "code": code} if bar and system
                                     else {"code": code}]})
    if codes:
        provision["code"] = codes
    return provision


def withheld_scopes(requested: ScopeSet, granted: ScopeSet) -> list[ClinicalScope]:
    """The requested clinical scopes of which nothing was granted (the user deselected them):
    a scope narrowed to some of its categories was not deselected."""
    return [s for s in requested.clinical if not any(s.covers(g) for g in granted.clinical)]


def _base(status: str, rule: str, *, patient: str, performer: str | None,
          organization: str | None, at: float) -> dict[str, Any]:
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "status": status,
        "scope": _concept(CONSENT_SCOPE, "patient-privacy", "Privacy Consent"),
        "category": [_concept(LOINC, "59284-0", "Patient Consent")],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": fhir_datetime(at),
    }
    if performer:
        consent["performer"] = [{"reference": performer}]
    if organization:
        consent["organization"] = [{"reference": organization}]
    consent["policyRule"] = _concept(ACT_CODE, rule, "opt-in" if rule == "OPTIN" else "opt-out")
    return consent


def approval_consent(*, grant_id: str, client_id: str, client_name: str | None, patient: str,
                     performer: str | None, organization: str | None, granted: ScopeSet,
                     withheld: Iterable[ClinicalScope], start: float,
                     end: float) -> dict[str, Any]:
    """The active Consent of an approval: `granted` permitted from `start` to `end` (the grant's
    expiry), `withheld` denied."""
    consent = _base("active", "OPTIN", patient=patient, performer=performer,
                    organization=organization, at=start)
    consent["identifier"] = [{"system": GRANT_SYSTEM, "value": grant_id}]
    nested = [scope_provision(s, "permit") for s in granted.clinical]
    nested += [scope_provision(s, "deny") for s in withheld]
    provision: dict[str, Any] = {
        "type": "permit",
        "period": {"start": fhir_datetime(start), "end": fhir_datetime(end)},
        "actor": [app_actor(client_id, client_name)],
    }
    if nested:
        provision["provision"] = nested
    consent["provision"] = provision
    return consent


def denial_consent(*, client_id: str, client_name: str | None, patient: str,
                   performer: str | None, organization: str | None, requested: ScopeSet,
                   at: float) -> dict[str, Any]:
    """The rejected Consent of a denial: every requested clinical scope denied to the app."""
    consent = _base("rejected", "OPTOUT", patient=patient, performer=performer,
                    organization=organization, at=at)
    provision: dict[str, Any] = {
        "type": "deny",
        "period": {"start": fhir_datetime(at)},
        "actor": [app_actor(client_id, client_name)],
    }
    nested = [scope_provision(s, "deny") for s in requested.clinical]
    if nested:
        provision["provision"] = nested
    consent["provision"] = provision
    return consent


def revoked_consent(consent: dict[str, Any], at: float) -> dict[str, Any]:
    """The next version of an approval's Consent once revoked at `at`: status inactive, the
    permission's period ending then (if it had not ended already). `meta` is dropped: the
    store writes it."""
    out = copy.deepcopy({k: v for k, v in consent.items() if k != "meta"})
    out["status"] = "inactive"
    provision = out.get("provision")
    if isinstance(provision, dict):
        period = provision.get("period")
        period = dict(period) if isinstance(period, dict) else {}
        end = fhir_datetime(at)
        old_end = period.get("end")
        if not isinstance(old_end, str) or _later(old_end, end):
            period["end"] = end
        start = period.get("start")
        if isinstance(start, str) and _later(start, period["end"]):
            period["end"] = start  # R4 per-1: a period never ends before it starts
        provision["period"] = period
    return out


def _later(a: str, b: str) -> bool:
    """Whether FHIR dateTime `a` lies after `b` (both written by `fhir_datetime` or any R4
    dateTime; unparsable values count as not later)."""
    ra, rb = date_range_ms(a, 0), date_range_ms(b, 0)
    return ra is not None and rb is not None and ra[0] > rb[0]

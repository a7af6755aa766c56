"""Consent decisions on chain: any FHIR R4 Consent version → `ConsentRegistry.decide` entries.

Every stored Consent version — written by the authorization server (`app/consent/records.py`)
or by a client through the FHIR API — becomes one decision per (actor, scope) pair of its
provisions, each a 137-byte entry (`app.audit.hashing.consent_entry`):

    patientHash | granteeHash | scopeHash | status (1) | expiresAt (8, big-endian) | decisionHash

- patientHash = HMAC("Patient/<id>") of `Consent.patient.reference` (`Patient/<id>`, or an
  absolute URL ending in it); 32 zero bytes when the Consent names no patient.
- granteeHash = HMAC(actor text). Actor text: `client:<client_id>` for an actor referenced by
  identifier `https://fhir.yilian.cn/sid/smart-client|<client_id>` (a SMART app); otherwise the
  actor's `reference` as written (`Organization/org-01`, `Practitioner/doc-001`); otherwise
  `identifier:<system>|<value>` for any other identifier. A provision without actors inherits
  its parent's; when the Consent names no actor at all the actor text is `any`.
- scopeHash = HMAC(scope text). Scope text: `scope:<SMART scope>` from the
  `https://fhir.yilian.cn/StructureDefinition/smart-scope` extension of a provision (e.g.
  `scope:patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/
  observation-category|laboratory`); otherwise `class:<code>` per `provision.class` (the
  resource type, e.g. `class:Observation`; `class:<system>|<code>` for a class in another code
  system), followed by `?code=<system>|<code>,…` (sorted) when the provision also has `code`;
  `code:<system>|<code>,…` when it has codes but no class; `data:<reference>` per
  `provision.data` when it has neither; `all` for a provision without any of these. A coding
  without a system is written as its bare code.
- Which provisions decide: the top provision and every nested one, depth first, that carries a
  restriction (extension, class, code or data) or has no nested provisions of its own; so the
  top provision of an authorization (actor and period only, the scopes nested) contributes
  nothing of its own. A Consent without any provision is one decision with scope text `all`.
- status: `inactive` or `entered-in-error` Consent → 3 Revoked for every decision; `rejected`
  → 2 Denied; `active` → the provision's `type` (inherited from its parent when absent; at the
  top, `deny` under policyRule OPTOUT or OPTOUTE, else `permit`): permit → 1 Granted, deny →
  2 Denied. `draft` and `proposed` Consents decide nothing (no entries).
- expiresAt: `provision.period.end` (inherited from the parent when absent) in unix seconds:
  a dateTime with a time gives its instant (floored to the second), a date without one the end
  of that day, month or year (in UTC); 0 when there is no end (1 for an end before 1970).
- decisionHash = SHA-256 of the version's stored canonical JSON (the bytes `GET
  /fhir/Consent/<id>/_history/<v>` returns), so the entry proves that exact version.

Identical entries of one version are written once. Each decision is one transaction, so a
version with more than `MAX_DECISIONS` (256) of them — far beyond any per-app authorization — is
recorded as the single decision `any`/`all` instead (status: Revoked or Denied as above for
the Consent's status, else Granted when any provision permits, Denied when none does); its
decisionHash still proves every provision of that version. The text returned beside each entry
is `<actor text> <scope text>` (kept in the local outbox only; it never goes on chain).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.audit.hashing import (
    CONSENT_DENIED,
    CONSENT_GRANTED,
    CONSENT_REVOKED,
    Keyer,
    consent_entry,
    sha256,
)
from app.consent.records import CLIENT_SYSTEM, RESOURCE_TYPES, SMART_SCOPE_URL
from app.search.dates import date_range_ms

REVOKED_STATUSES = ("inactive", "entered-in-error")
UNDECIDED_STATUSES = ("draft", "proposed")
OPT_OUT_RULES = ("OPTOUT", "OPTOUTE")
ANY_ACTOR = "any"
ALL_SCOPE = "all"
MAX_EXPIRES = 2**64 - 1
MAX_DECISIONS = 256


@dataclass(frozen=True)
class _Decision:
    actor: str
    scope: str
    kind: str  # permit | deny
    expires_at: int


def decisions_of(consent: dict[str, Any], body: bytes, keyer: Keyer,
                 ) -> list[tuple[str, bytes]]:
    """The on-chain consent decisions of one stored Consent version (`body`: its canonical
    JSON): `(actor text + " " + scope text, 137-byte entry)` each, in provision order."""
    status = consent.get("status")
    if not isinstance(status, str) or status in UNDECIDED_STATUSES:
        return []
    patient_hash = keyer.patient(patient_id(consent.get("patient")))
    decision_hash = sha256(body)
    top = consent.get("provision")
    default_kind = "deny" if _policy_rule(consent) in OPT_OUT_RULES else "permit"
    if isinstance(top, dict):
        found = list(_walk(top, [ANY_ACTOR], default_kind, 0))
    else:
        found = [_Decision(ANY_ACTOR, ALL_SCOPE, default_kind, 0)]
    if len(found) > MAX_DECISIONS:
        kind = "permit" if any(d.kind == "permit" for d in found) else "deny"
        found = [_Decision(ANY_ACTOR, ALL_SCOPE, kind, 0)]
    out: list[tuple[str, bytes]] = []
    seen: set[bytes] = set()
    for d in found:
        if status in REVOKED_STATUSES:
            code = CONSENT_REVOKED
        elif status == "rejected" or d.kind == "deny":
            code = CONSENT_DENIED
        else:
            code = CONSENT_GRANTED
        entry = consent_entry(patient_hash, keyer.key(d.actor), keyer.key(d.scope), code,
                              d.expires_at, decision_hash)
        if entry not in seen:
            seen.add(entry)
            out.append((f"{d.actor} {d.scope}", entry))
    return out


def patient_id(patient: Any) -> str | None:
    """The Patient id of a `Reference` (`Patient/<id>`, or an absolute URL ending in it, a
    version suffix dropped); None for anything else."""
    if not isinstance(patient, dict):
        return None
    ref = patient.get("reference")
    if not isinstance(ref, str):
        return None
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
        return parts[-1]
    return None


def _policy_rule(consent: dict[str, Any]) -> str | None:
    rule = consent.get("policyRule")
    if isinstance(rule, dict):
        for coding in _list(rule.get("coding")):
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def actor_text(actor: Any) -> str | None:
    """The keyed text of a `provision.actor` (see the module docstring)."""
    if not isinstance(actor, dict):
        return None
    ref = actor.get("reference")
    if not isinstance(ref, dict):
        return None
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("system") == CLIENT_SYSTEM \
            and isinstance(ident.get("value"), str):
        return f"client:{ident['value']}"
    if isinstance(ref.get("reference"), str) and ref["reference"]:
        return str(ref["reference"])
    if isinstance(ident, dict) and isinstance(ident.get("value"), str):
        return f"identifier:{ident.get('system') or ''}|{ident['value']}"
    return None


def _coding_text(coding: Any, plain_system: str | None = None) -> str | None:
    if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
        return None
    system = coding.get("system")
    if not isinstance(system, str) or not system or system == plain_system:
        return str(coding["code"])
    return f"{system}|{coding['code']}"


def scope_texts(provision: dict[str, Any]) -> list[str]:
    """The keyed scope texts of one provision's own restriction; [] when it has none."""
    for ext in _list(provision.get("extension")):
        if isinstance(ext, dict) and ext.get("url") == SMART_SCOPE_URL \
                and isinstance(ext.get("valueString"), str):
            return [f"scope:{ext['valueString']}"]
    classes = [t for c in _list(provision.get("class"))
               if (t := _coding_text(c, RESOURCE_TYPES)) is not None]
    codes = sorted({t for concept in _list(provision.get("code")) if isinstance(concept, dict)
                    for c in _list(concept.get("coding"))
                    if (t := _coding_text(c)) is not None})
    if classes:
        qualifier = f"?code={','.join(codes)}" if codes else ""
        return list(dict.fromkeys(f"class:{c}{qualifier}" for c in classes))
    if codes:
        return [f"code:{','.join(codes)}"]
    data = [d["reference"]["reference"] for d in _list(provision.get("data"))
            if isinstance(d, dict) and isinstance(d.get("reference"), dict)
            and isinstance(d["reference"].get("reference"), str)]
    return list(dict.fromkeys(f"data:{r}" for r in data))


def expires_at(period: Any) -> int | None:
    """`period.end` in unix seconds (module docstring); None when the period has no end."""
    if not isinstance(period, dict) or not isinstance(period.get("end"), str):
        return None
    end = period["end"]
    found = date_range_ms(end, 0)
    if found is None:
        return None
    ms = found[0] if "T" in end else found[1]
    return min(max(ms // 1000, 1), MAX_EXPIRES)


def _walk(provision: dict[str, Any], actors: list[str], kind: str, expires: int,
          ) -> Iterator[_Decision]:
    own_actors = [t for a in _list(provision.get("actor")) if (t := actor_text(a)) is not None]
    actors = list(dict.fromkeys(own_actors)) or actors
    own_kind = provision.get("type")
    kind = own_kind if own_kind in ("permit", "deny") else kind
    own_expiry = expires_at(provision.get("period"))
    expires = own_expiry if own_expiry is not None else expires
    nested = [p for p in _list(provision.get("provision")) if isinstance(p, dict)]
    scopes = scope_texts(provision)
    if not scopes and not nested:
        scopes = [ALL_SCOPE]
    for actor in actors:
        for scope in scopes:
            yield _Decision(actor, scope, kind, expires)
    for child in nested:
        yield from _walk(child, actors, kind, expires)


def deletion_decisions(previous: dict[str, Any], keyer: Keyer) -> list[tuple[str, bytes]]:
    """The decisions of a Consent's deletion: every decision of the version before it, revoked.

    A deletion is a revocation; its stored version has no content (an empty body), so the
    decisions are those of the last version with content, as if it had become `inactive`, and
    their decisionHash is SHA-256 of the deletion's empty body.
    """
    return decisions_of({**previous, "status": "inactive"}, b"", keyer)

"""Accesses recorded compactly on the request path, sealed into AuditEvents off it.

A read must be recorded durably before it is answered, but building its AuditEvent (a dict of
some twenty nodes, canonical JSON, two SHA-256 and an HMAC) costs more than the read itself. So
a read stores a *raw access*: the AuditEvent's id, its time, its patient and the few facts the
AuditEvent is made of (interaction, status, caller, versions returned), as one small JSON array
in `audit_raw` (var/audit.sqlite3). Sealing turns raw accesses into AuditEvents and their chain
entries (`audit` rows) with the very builders the request path would have used, and deletes the
raw rows in the same transaction: an access is either raw or sealed, never both, never neither.

Who seals: the anchoring worker at the start of every round (so, on the dev chain, the separate
`yilian anchor` process, on the other core), every worker's housekeeping for what waited longer
than a grace period (and for everything when no chain is configured), and any reader of the
audit trail first (`GET /fhir/AuditEvent…`, `$verify`, `yilian audit verify` counts raw
accesses as pending). A raw access is no weaker a record than an AuditEvent not yet anchored:
both sit in the same file until the chain has them (docs/chain.md, threat model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from app.audit import events
from app.audit.hashing import Keyer, access_entry, canonical_json, sha256
from app.pipeline.hooks import Interaction, Principal
from app.search.dates import format_instant_ms
from app.storage.base import AuditRow, RawAccess

FORMAT = 1  # the first element of every raw access: its layout
_KEY_CACHE = 100_000  # keyed patient hashes kept


class Access(NamedTuple):
    """A raw access decoded: what `events.rest_event` needs."""

    interaction: Interaction
    status: int
    principal: Principal
    source: str
    query: str | None
    detail: str | None
    refs: list[str]  # Type/id/_history/version of every version returned


def encode(id_: str, recorded_ms: int, patient: str | None, interaction: Interaction,
           status: int, principal: Principal, source: str, query: str | None,
           detail: str | None, refs: Sequence[str]) -> RawAccess:
    p = principal
    data = orjson.dumps([FORMAT, interaction.kind, interaction.resource_type,
                         interaction.resource_id, interaction.operation, status, p.subject,
                         p.fhir_user, p.client_id, p.address, p.anonymous, source, query, detail,
                         refs])
    return RawAccess(id_, recorded_ms, patient, data)


def decode(data: bytes) -> Access:
    v = orjson.loads(data)
    if not isinstance(v, list) or len(v) != 15 or v[0] != FORMAT:
        raise ValueError("not a raw access of format 1")
    (_, kind, rtype, rid, op, status, subject, fhir_user, client_id, address, anonymous, source,
     query, detail, refs) = v
    return Access(Interaction(kind, rtype, rid, op),
                  int(status),
                  Principal(subject=subject, client_id=client_id, address=address,
                            anonymous=bool(anonymous), fhir_user=fhir_user),
                  source, query, detail, list(refs))


def audit_row(event: dict[str, Any], recorded_ms: int, patient: str | None,
              principal: Principal, patient_key: bytes) -> AuditRow:
    """The stored form of an AuditEvent: canonical JSON and its 65-byte access entry."""
    body = canonical_json(event)
    return AuditRow(event["id"], recorded_ms, patient, event["action"], event["outcome"],
                    principal.fhir_user or principal.subject, principal.client_id, body,
                    access_entry(sha256(body), patient_key, event["action"]))


class Sealer:
    """Raw accesses -> AuditEvent rows (keyed patient hashes cached)."""

    def __init__(self, keyer: Keyer) -> None:
        self.keyer = keyer
        self._keys: dict[str | None, bytes] = {}

    def patient_key(self, patient: str | None) -> bytes:
        key = self._keys.get(patient)
        if key is None:
            if len(self._keys) > _KEY_CACHE:
                self._keys.clear()
            key = self._keys[patient] = self.keyer.patient(patient)
        return key

    def seal(self, raw: RawAccess) -> AuditRow:
        a = decode(raw.data)
        key = self.patient_key(raw.patient)
        event = events.rest_event(raw.id, format_instant_ms(raw.recorded_ms), a.interaction,
                                  a.status, a.principal, raw.patient, key, a.refs, a.source,
                                  a.query, a.detail)
        return audit_row(event, raw.recorded_ms, raw.patient, a.principal, key)

    def __call__(self, raws: Sequence[RawAccess]) -> list[AuditRow]:
        return [self.seal(r) for r in raws]

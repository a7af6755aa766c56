"""The auditor of the FHIR pipeline: every interaction becomes AuditEvents and chain entries.

`ChainAuditor.record` turns an `AuditRecord` into one AuditEvent per patient touched (see
`app/audit/events.py`), each with its 65-byte access entry, and, for writes, a version anchor per
written version and the consent decisions of written Consents. A write's rows go into its own
unit of work (they commit or roll back with it). A read is recorded as one raw access per
patient touched (`app/audit/sealing.py`), group-committed before the response leaves
(`SqliteStore.append_access`), so no access is answered unrecorded; sealing builds their
AuditEvents off the request path. The anchoring worker (`app/chain/anchorer.py`) takes them from
there.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from app.audit import events, sealing
from app.audit.hashing import Keyer, version_entry
from app.auth.compartment import PatientCompartment
from app.consent.chain import decisions_of, deletion_decisions
from app.fhir.outcome import error
from app.pipeline.hooks import AuditRecord, Principal
from app.search.dates import format_instant_ms
from app.storage.base import AuditRow, OutboxRow, RawAccess, Store, StoredVersion, UnitOfWork

log = logging.getLogger("yilian.audit")

# (type, id, version) -> patient ids: versions never change, so this never goes stale
_CACHE_SIZE = 100_000
# With a chain, the anchoring worker seals reads' raw accesses every round; a worker's
# housekeeping seals only those that waited longer than this (no anchoring worker running).
SEAL_GRACE_MS = 5000

ConsentDecisions = Callable[[dict[str, Any], bytes, Keyer], list[tuple[str, bytes]]]


class ChainAuditor:
    """`Auditor` (app/pipeline/hooks.py) that stores AuditEvents and queues chain entries."""

    def __init__(self, store: Store, keyer: Keyer, compartment: PatientCompartment, *,
                 source: str, fail_closed: bool = False, fail_closed_lag_seconds: int = 30,
                 chain_enabled: bool = True) -> None:
        self.store = store
        self.keyer = keyer
        self.compartment = compartment
        self.source = source
        self.fail_closed = fail_closed and chain_enabled
        self.fail_closed_lag_ms = fail_closed_lag_seconds * 1000
        self._patients: OrderedDict[tuple[str, str, int], tuple[str, ...]] = OrderedDict()
        self.sealer = sealing.Sealer(keyer)
        store.use_sealer(self.sealer, SEAL_GRACE_MS if chain_enabled else 0)
        self._lag_checked = 0.0
        self._lag_ok = True
        # AuditEvent ids: a random prefix per process and a counter (unique across workers and
        # restarts without a UUID per read)
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        # zero-padded: a process's ids ascend, so the id index grows at its end
        return f"{self._id_prefix}{next(self._ids):012x}"

    # -- the pipeline hook ----------------------------------------------------------------

    async def record(self, record: AuditRecord, tx: UnitOfWork | None = None) -> None:
        now_ms = int(time.time() * 1000)
        if tx is None and not record.written and not self.store.in_unit_of_work():
            # a read: raw accesses now, AuditEvents when sealed (app/audit/sealing.py)
            await self.store.append_access(self._raw(record, now_ms))
            return
        recorded = format_instant_ms(now_ms)
        audit = [self._row(event, now_ms, patient, record.principal)
                 for patient, event in self._events(record, recorded)]
        outbox = await self._anchors(record.versions, now_ms) if record.written else []
        if tx is not None:
            await tx.append_audit(audit, outbox)
        else:
            await self.store.append_audit(audit, outbox)

    async def auth_event(self, *, subtype: str, success: bool, client_id: str | None,
                         user: str | None, patient: str | None, address: str | None,
                         scopes: str | None = None, detail: str | None = None) -> None:
        """An authorization event (token issued, refreshed or revoked; authorization approved
        or denied) as an AuditEvent and chain entry."""
        if subtype not in events.AUTH_SUBTYPES:
            raise ValueError(f"unknown auth event {subtype!r}")
        principal = Principal(subject=user, client_id=client_id, address=address,
                              anonymous=user is None and client_id is None, fhir_user=user,
                              patient=patient)
        now_ms = int(time.time() * 1000)
        event = events.auth_event(self.new_id(), format_instant_ms(now_ms), subtype,
                                  success, principal, patient, self._patient_key(patient),
                                  self.source, scopes, detail)
        await self.store.append_audit([self._row(event, now_ms, patient, principal)], [])

    async def admit_write(self) -> None:
        """Fail-closed policy (YILIAN_AUDIT_FAIL_CLOSED): refuse writes while the oldest
        unanchored entry is older than the configured lag. Checked at most once a second."""
        if not self.fail_closed:
            return
        now = time.monotonic()
        if now - self._lag_checked >= 1.0:
            self._lag_checked = now
            oldest = await self.store.oldest_unanchored_ms()
            self._lag_ok = oldest is None or \
                time.time() * 1000 - oldest < self.fail_closed_lag_ms
        if not self._lag_ok:
            raise error(503, "transient", "writes are paused: the audit chain has not confirmed "
                        f"entries for more than {self.fail_closed_lag_ms // 1000} s "
                        "(YILIAN_AUDIT_FAIL_CLOSED is on); reads go on; retry later",
                        headers={"Retry-After": "5"})

    # -- building -------------------------------------------------------------------------

    def _groups(self, record: AuditRecord) -> dict[str | None, list[StoredVersion]]:
        """The versions of `record` by the patient whose compartment holds them."""
        groups: dict[str | None, list[StoredVersion]] = {}
        if len(record.versions) == 1:  # a read: the common case, without the grouping
            v = record.versions[0]
            patients = self.patients_of(v)
            if len(patients) == 1:
                groups[patients[0]] = [v]
        for v in record.versions if not groups else ():
            patients = self.patients_of(v)
            if not patients:
                groups.setdefault(None, []).append(v)
            for p in patients:
                groups.setdefault(p, []).append(v)
        if not groups:
            it = record.interaction
            patient = record.principal.patient or (
                it.resource_id if it.resource_type == "Patient" else None)
            groups[patient] = []
        return groups

    def _raw(self, record: AuditRecord, now_ms: int) -> list[RawAccess]:
        return [sealing.encode(self.new_id(), now_ms, patient, record.interaction,
                               record.status, record.principal, self.source, record.query,
                               record.detail, [events.version_ref(v) for v in versions])
                for patient, versions in self._groups(record).items()]

    def _events(self, record: AuditRecord, recorded: str,
                ) -> list[tuple[str | None, dict[str, Any]]]:
        return [(patient, events.rest_event(
                    self.new_id(), recorded, record.interaction, record.status,
                    record.principal, patient, self._patient_key(patient),
                    [events.version_ref(v) for v in versions], self.source, record.query,
                    record.detail))
                for patient, versions in self._groups(record).items()]

    def _row(self, event: dict[str, Any], now_ms: int, patient: str | None,
             principal: Principal) -> AuditRow:
        return sealing.audit_row(event, now_ms, patient, principal, self._patient_key(patient))

    async def _anchors(self, versions: Sequence[StoredVersion], now_ms: int,
                       ) -> list[OutboxRow]:
        """A version anchor per written version, and the ConsentRegistry decisions of a written
        Consent (app/consent/chain.py): a deletion revokes those of the version before it."""
        out = []
        for v in versions:
            ref = f"{v.type}/{v.id}/_history/{v.version}"
            out.append(OutboxRow("version", ref, version_entry(
                self.keyer.version(v.type, v.id, v.version), v.body), now_ms))
            if v.type != "Consent":
                continue
            if not v.deleted:
                decisions = decisions_of(orjson.loads(v.body), v.body, self.keyer)
            else:
                previous = await self.store.vread(v.type, v.id, v.version - 1)
                decisions = [] if previous is None or previous.deleted else \
                    deletion_decisions(orjson.loads(previous.body), self.keyer)
            out.extend(OutboxRow("consent", ref, payload, now_ms) for _, payload in decisions)
        return out

    def _patient_key(self, patient: str | None) -> bytes:
        return self.sealer.patient_key(patient)

    def patients_of(self, v: StoredVersion) -> tuple[str, ...]:
        """Ids of the patients whose compartment holds version `v` (a deletion: none, unless it
        is a Patient)."""
        if v.type == "Patient":
            return (v.id,)
        if v.deleted or v.type not in self.compartment.member_types():
            return ()
        key = (v.type, v.id, v.version)
        found = self._patients.get(key)
        if found is None:
            found = tuple(sorted(self.compartment.patients_of(orjson.loads(v.body))))
            self._patients[key] = found
            if len(self._patients) > _CACHE_SIZE:
                self._patients.popitem(last=False)
        return found

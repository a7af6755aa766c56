"""The storage interface every backend implements (embedded SQLite now, MongoDB later).

Callers above this line (REST interactions, transactions, operations) never see SQL or MongoDB
queries: they read stored versions, run parsed searches (`app.search.query.SearchQuery`) and write
through a unit of work, which commits all of its writes (resource, history, search index, and
later the audit outbox) atomically or none of them.

A backend is given the `Indexer` that turns a resource into search-index rows, so every backend
indexes the same values; what it does with them (tables, multikey arrays) is its own business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.search.query import Clause, SearchQuery


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of a resource as stored: its canonical JSON bytes and their metadata."""

    type: str
    id: str
    version: int
    last_updated: str  # FHIR instant, UTC, millisecond precision: 2026-11-23T01:02:03.456Z
    deleted: bool
    body: bytes  # canonical JSON with meta.versionId/lastUpdated; b"" for a deletion
    method: str = "PUT"  # POST | PUT | PATCH | DELETE: how this version came to be


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    type: str | None = None  # None: system history
    id: str | None = None  # set: instance history
    since: str | None = None  # FHIR instant; versions updated at or after it
    at: str | None = None  # FHIR date/dateTime; versions current at that point in time
    count: int = 20
    offset: int = 0
    snapshot: int | None = None  # paging cursor: only versions recorded up to this sequence
    # Access clauses (authorization) on the resource's current row, ANDed in: history then lists
    # only versions of resources the caller may see (their content is judged again one by one).
    access: tuple[Clause, ...] = ()


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[StoredVersion]
    total: int
    snapshot: int  # pass back as HistoryQuery.snapshot for the next pages


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of search results, in order, with what `_include`/`_revinclude` added."""

    matches: list[StoredVersion]
    included: list[StoredVersion]
    total: int | None  # None when `_total=none` let the backend skip counting
    snapshot_id: str | None  # paging cursor for the next pages; None when all fit one page
    offset: int
    has_more: bool


@dataclass
class WriteResult:
    version: StoredVersion
    created: bool
    previous: StoredVersion | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One AuditEvent as stored (`app/audit/`): its hashed JSON and its 65-byte chain entry."""

    id: str
    recorded_ms: int
    patient: str | None  # Patient id (kept off chain)
    action: str  # C R U D E
    outcome: str  # 0 4 8 12
    agent: str | None  # "Practitioner/…", "Patient/…" or None
    client: str | None
    body: bytes  # canonical JSON of the AuditEvent without meta and proof
    entry: bytes  # entryHash | patientHash | action code


@dataclass(frozen=True, slots=True)
class RawAccess:
    """A read's access as recorded on the request path, before it is sealed into its AuditEvent
    (`app/audit/sealing.py`)."""

    id: str  # the AuditEvent's id
    recorded_ms: int
    patient: str | None
    data: bytes  # the facts the AuditEvent is built from (JSON array, sealing.FORMAT)


# Raw accesses -> their AuditEvent rows (app/audit/sealing.py: Sealer)
SealFn = Callable[[Sequence[RawAccess]], list[AuditRow]]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A chain entry other than an access: a resource-version anchor or a consent decision."""

    kind: str  # version | consent
    ref: str  # Type/id/_history/version
    payload: bytes
    recorded_ms: int


@dataclass(frozen=True, slots=True)
class ChainProof:
    chain_id: int
    contract: str
    tx_hash: str
    block: int
    log_index: int


@dataclass(frozen=True, slots=True)
class StoredAudit:
    seq: int
    row: AuditRow
    proof: ChainProof | None  # None while in the outbox or not yet confirmed


@dataclass(frozen=True, slots=True)
class AuditQuery:
    patient: str | None = None
    agent: str | None = None
    client: str | None = None
    action: str | None = None
    outcome: str | None = None
    since_ms: int | None = None  # recorded at or after
    until_ms: int | None = None  # recorded before
    before_seq: int | None = None  # paging cursor (newest first)
    count: int = 20


class UnitOfWork(Protocol):
    """Reads and writes inside one atomic transaction. Commits when the context exits cleanly."""

    async def read(self, type_: str, id_: str) -> StoredVersion | None: ...

    async def search_ids(self, query: SearchQuery, limit: int) -> list[tuple[str, str]]:
        """(type, id) of current resources matching `query` (for conditional interactions)."""
        ...

    async def put(self, type_: str, id_: str, resource: dict[str, Any], *, method: str,
                  if_match: int | None = None) -> WriteResult:
        """Create or update `type_/id_` with `resource`; sets meta.versionId/lastUpdated.

        Raises `VersionConflict` when `if_match` is given and is not the current version.
        """
        ...

    async def delete(self, type_: str, id_: str, *,
                     if_match: int | None = None) -> WriteResult | None:
        """Delete the current version; None when there is nothing current to delete."""
        ...

    async def new_id(self) -> str: ...

    async def append_audit(self, audit: Sequence[AuditRow], outbox: Sequence[OutboxRow]) -> None:
        """Store AuditEvents and chain entries in this unit of work (with what they record)."""
        ...


class Store(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, type_: str, id_: str) -> StoredVersion | None:
        """The current version (possibly a deletion marker), or None if the id was never used."""
        ...

    async def vread(self, type_: str, id_: str, version: int) -> StoredVersion | None: ...

    async def history(self, query: HistoryQuery) -> HistoryPage: ...

    async def search(self, query: SearchQuery) -> SearchPage: ...

    async def search_page(self, snapshot_id: str, offset: int, count: int,
                          query: SearchQuery) -> SearchPage | None:
        """A later page of an earlier search; None when the snapshot has expired."""
        ...

    def unit_of_work(self) -> AbstractAsyncContextManager[UnitOfWork]: ...

    async def everything(self, patient_id: str, types: Sequence[str] | None, since: str | None,
                         ) -> list[tuple[str, str]]:
        """(type, id) of every current resource in the Patient compartment of `patient_id`."""
        ...


    async def append_audit(self, audit: Sequence[AuditRow], outbox: Sequence[OutboxRow]) -> None:
        """Store AuditEvents and chain entries durably (group-committed); returns once they are
        committed."""
        ...

    async def append_access(self, raw: Sequence[RawAccess]) -> None:
        """Store reads' raw accesses durably (group-committed) for sealing later; returns once
        they are committed. Not inside a unit of work (`in_unit_of_work`)."""
        ...

    def in_unit_of_work(self) -> bool:
        """Is the calling task inside its own unit of work (a transaction bundle)?"""
        ...

    def use_sealer(self, seal: SealFn, grace_ms: int) -> None:
        """How raw accesses become AuditEvents; housekeeping seals those older than
        `grace_ms` (the anchoring worker seals the rest)."""
        ...

    async def seal_accesses(self) -> None:
        """Seal every raw access now (before the audit trail is read)."""
        ...

    async def audit_get(self, id_: str) -> StoredAudit | None: ...

    async def audit_search(self, query: AuditQuery) -> tuple[list[StoredAudit], int]:
        """Matching AuditEvents, newest first, at most `query.count`; and the total."""
        ...

    async def version_proof(self, type_: str, id_: str, version: int,
                            ) -> tuple[bytes, ChainProof | None] | None:
        """The queued anchor entry of a resource version and its proof once confirmed; None
        when the version was never queued (written before auditing)."""
        ...

    async def oldest_unanchored_ms(self) -> int | None:
        """When the oldest entry still waiting for the chain was recorded (None: none waits)."""
        ...


class VersionConflict(Exception):
    def __init__(self, current: int | None, expected: int) -> None:
        super().__init__(f"version {expected} expected, current is {current}")
        self.current = current
        self.expected = expected

"""The pipeline's hooks: who is calling, may they do this, and the record of what was done.

Every interaction (REST, each transaction/batch entry, every resource a search or an operation
returns) passes `Authorizer.check` before it executes, `Authorizer.restrict` for every search it
runs (including conditional matches), `Authorizer.visible` for each resource it would return and
`Authorizer.writable` for content it would store, then `Auditor.record` once it has run. The
implementations here let everything through and record nothing (`YILIAN_AUTH=off`); SMART
authorization (`app/auth/authorizer.py`) and the on-chain audit plug in here, without a side
door, because no interaction reaches the store any other way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import HTTPConnection

from app.auth.scopes import ScopeSet
from app.search.query import Clause, SearchQuery
from app.storage.base import StoredVersion, UnitOfWork


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: filled in by the authenticator.

    The fields after `anonymous` come from a SMART access token (`app/auth/bearer.py`) and stay
    None for anonymous and in-process callers.
    """

    subject: str | None = None  # e.g. "Practitioner/doc-001" or "Patient/pat-000001"
    client_id: str | None = None
    scopes: tuple[str, ...] = ()  # the granted scopes as text (canonical order)
    address: str | None = None
    anonymous: bool = True
    scope_set: ScopeSet | None = None  # the same scopes, parsed
    patient: str | None = None  # launch context: Patient id (not a reference)
    encounter: str | None = None  # launch context: Encounter id
    fhir_user: str | None = None  # "Patient/…" or "Practitioner/…" of the signed-in user
    token_id: str | None = None  # the access token's `jti`
    grant_id: str | None = None  # the grant the token was issued under (revocation unit)
    expires_at: float | None = None  # the token's `exp` (NumericDate)
    # In-process callers (the importer CLI, the demo loader) that no HTTP request can become:
    # the authenticator never sets it, so it is only ever constructed by our own code.
    internal: bool = False

    @property
    def key(self) -> str:
        """What binds a search result set to its caller (page tokens): the grant, the client,
        the subject and the launch patient; empty for anonymous and internal callers."""
        if self.anonymous or self.internal:
            return ""
        return f"{self.grant_id or ''}|{self.client_id or ''}|{self.subject or ''}|" \
               f"{self.patient or ''}"


@dataclass(frozen=True, slots=True)
class Interaction:
    """One FHIR interaction about to run: `read`, `vread`, `search-type`, `create`, …"""

    kind: str
    resource_type: str | None = None
    resource_id: str | None = None
    operation: str | None = None  # `$validate`, `$everything`
    in_bundle: bool = False
    # The SMART permission letters (c r u d s) the interaction needs when its kind alone does
    # not say (`$validate` with or without a body); None: derived from `kind`.
    permissions: str | None = None


@dataclass
class AuditRecord:
    principal: Principal
    interaction: Interaction
    status: int
    # every resource version the interaction touched: returned, included or written
    versions: list[StoredVersion] = field(default_factory=list)
    written: bool = False  # `versions` were written by this interaction (anchor them)
    query: str | None = None  # a search's or history's query string, as the client sent it
    detail: str | None = None  # why it failed, for outcomes other than success


class Authenticator(Protocol):
    async def authenticate(self, conn: HTTPConnection) -> Principal: ...


class Authorizer(Protocol):
    async def check(self, principal: Principal, interaction: Interaction) -> None:
        """Raise `FhirError` (401/403/404) when `principal` may not run `interaction`."""
        ...

    def visible(self, principal: Principal, version: StoredVersion, perm: str = "r") -> bool:
        """May `principal` see this resource in a result (search hit, include, history)?"""
        ...

    def restrict(self, principal: Principal, query: SearchQuery, perm: str = "s") -> SearchQuery:
        """`query` limited to what `principal` may see: access clauses ANDed into it, its chains
        and `_has` targets and its includes; raises `FhirError(403)` when it names a type the
        token has no permission for."""
        ...

    def writable(self, principal: Principal, resource: dict[str, Any], perm: str) -> bool:
        """May `principal` write `resource` (its content: e.g. which patient it is about)?"""
        ...

    def searchable_types(self, principal: Principal,
                         types: Sequence[str]) -> tuple[list[str], bool]:
        """Of `types`, those `principal` may search, and whether their results still need a
        `visible` check each (granular restrictions)."""
        ...

    def restricted(self, principal: Principal) -> bool:
        """Whether anything may be hidden from `principal` (False: sees everything)."""
        ...

    def access_clauses(self, principal: Principal, types: Sequence[str],
                       perm: str) -> list[Clause] | None:
        """Clauses selecting the resources of `types` `principal` may `perm` (for queries that
        are not searches, such as history); None when nothing is hidden."""
        ...


class Auditor(Protocol):
    async def record(self, record: AuditRecord, tx: UnitOfWork | None = None) -> None:
        """Record what was done: inside `tx` when given (a write: the AuditEvent commits or
        rolls back with it), durably before returning otherwise."""
        ...

    async def admit_write(self) -> None:
        """Raise `FhirError(503)` when writes must wait for the chain (fail-closed policy)."""
        ...


class AnonymousAuthenticator:
    async def authenticate(self, conn: HTTPConnection) -> Principal:
        client = conn.client
        return Principal(address=client.host if client else None)


class AllowAll:
    async def check(self, principal: Principal, interaction: Interaction) -> None:
        return None

    def visible(self, principal: Principal, version: StoredVersion, perm: str = "r") -> bool:
        return True

    def restrict(self, principal: Principal, query: SearchQuery, perm: str = "s") -> SearchQuery:
        return query

    def writable(self, principal: Principal, resource: dict[str, Any], perm: str) -> bool:
        return True

    def searchable_types(self, principal: Principal,
                         types: Sequence[str]) -> tuple[list[str], bool]:
        return list(types), False

    def restricted(self, principal: Principal) -> bool:
        return False

    def access_clauses(self, principal: Principal, types: Sequence[str],
                       perm: str) -> list[Clause] | None:
        return None


class NoAudit:
    async def record(self, record: AuditRecord, tx: UnitOfWork | None = None) -> None:
        return None

    async def admit_write(self) -> None:
        return None


@dataclass
class Hooks:
    authenticator: Authenticator = field(default_factory=AnonymousAuthenticator)
    authorizer: Authorizer = field(default_factory=AllowAll)
    auditor: Auditor = field(default_factory=NoAudit)

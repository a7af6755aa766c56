"""The pipeline's hooks: who is calling, may they do this, and the record of what was done.

Every interaction (REST, each transaction/batch entry, every resource a search or an operation
returns) passes `Authorizer.check` before it executes and `Authorizer.visible` for each resource it
would return, then `Auditor.record` once it has run. The implementations here let everything
through and record nothing: SMART authorization and the on-chain audit plug in here, without a
side door, because no interaction reaches the store any other way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import HTTPConnection

from app.auth.scopes import ScopeSet
from app.storage.base import StoredVersion


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


@dataclass(frozen=True, slots=True)
class Interaction:
    """One FHIR interaction about to run: `read`, `vread`, `search-type`, `create`, …"""

    kind: str
    resource_type: str | None = None
    resource_id: str | None = None
    operation: str | None = None  # `$validate`, `$everything`
    in_bundle: bool = False


@dataclass
class AuditRecord:
    principal: Principal
    interaction: Interaction
    status: int
    entities: list[tuple[str, str, int]] = field(default_factory=list)  # (type, id, version)


class Authenticator(Protocol):
    async def authenticate(self, conn: HTTPConnection) -> Principal: ...


class Authorizer(Protocol):
    async def check(self, principal: Principal, interaction: Interaction) -> None:
        """Raise `FhirError` (401/403/404) when `principal` may not run `interaction`."""
        ...

    def visible(self, principal: Principal, version: StoredVersion) -> bool:
        """May `principal` see this resource in a result (search hit, include, history)?"""
        ...


class Auditor(Protocol):
    async def record(self, record: AuditRecord) -> None: ...


class AnonymousAuthenticator:
    async def authenticate(self, conn: HTTPConnection) -> Principal:
        client = conn.client
        return Principal(address=client.host if client else None)


class AllowAll:
    async def check(self, principal: Principal, interaction: Interaction) -> None:
        return None

    def visible(self, principal: Principal, version: StoredVersion) -> bool:
        return True


class NoAudit:
    async def record(self, record: AuditRecord) -> None:
        return None


@dataclass
class Hooks:
    authenticator: Authenticator = field(default_factory=AnonymousAuthenticator)
    authorizer: Authorizer = field(default_factory=AllowAll)
    auditor: Auditor = field(default_factory=NoAudit)

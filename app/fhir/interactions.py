"""FHIR R4 RESTful interactions (http://hl7.org/fhir/R4/http.html), independent of HTTP and store.

`FhirService` implements read, vread, create, update, patch, delete (each with its conditional
form), history and search on top of the `Store` interface. HTTP routes and transaction/batch
processing both call it, so every interaction passes the same authorize and audit hooks.
Results are `Result` values (status, body, headers) that the REST layer serialises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from app.config import Settings
from app.definitions.registry import Registry
from app.fhir.outcome import FhirError, Issue, error, information
from app.fhir.patch import PatchError, apply_json_patch
from app.fhir.profile_validation import ProfileValidator
from app.fhir.summary import apply_elements, apply_summary
from app.fhir.validation import validate_resource
from app.pipeline.hooks import AuditRecord, Hooks, Interaction, Principal
from app.search.dates import http_date, instant_to_ms
from app.search.query import Clause, ParseContext, SearchQuery, parse_search
from app.storage.base import (
    HistoryQuery,
    SearchPage,
    Store,
    StoredVersion,
    UnitOfWork,
    VersionConflict,
)
from app.text import is_digits

MAX_INT = 2**62  # larger numbers are client errors, never SQLite overflows
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ETAG_RE = re.compile(r'^(?:W/)?"([0-9]+)"$')
PAGING_PARAMS = ("_page_token", "_offset")
WRITE_KINDS = frozenset(("create", "update", "patch", "delete"))


@dataclass
class Result:
    status: int
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    version: StoredVersion | None = None


@dataclass
class Call:
    """What the caller asked for, beyond the URL: headers that change an interaction."""

    principal: Principal
    prefer_return: str = "representation"  # minimal | representation | OperationOutcome
    strict: bool = False  # Prefer: handling=strict
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_none_exist: str | None = None
    in_bundle: bool = False
    # Set only by transaction processing, which validates every entry before it takes the
    # write lock (so validation never runs while other writers wait).
    prevalidated: bool = False


def version_headers(v: StoredVersion, base_url: str) -> dict[str, str]:
    return {
        "ETag": f'W/"{v.version}"',
        "Last-Modified": http_date(v.last_updated),
        "Location": f"{base_url}/{v.type}/{v.id}/_history/{v.version}",
    }


def parse_etag(value: str | None, header: str) -> int | None:
    if value is None:
        return None
    m = ETAG_RE.match(value.strip())
    if not m:
        raise error(400, "invalid", f'{header} must be a version ETag such as W/"3", got {value!r}')
    return int(m.group(1))


def write_refused(resource_type: str) -> FhirError:
    """403 for content the grant does not cover (only what the client sent is named)."""
    return FhirError(403, [Issue("error", "forbidden", f"the access token does not allow "
                                 f"writing this {resource_type}: its content (e.g. the patient "
                                 "it is about) is outside what the token grants")])


class FhirService:
    def __init__(self, store: Store, registry: Registry, settings: Settings, hooks: Hooks,
                 parse_context: ParseContext, profile_validator: ProfileValidator) -> None:
        self.store = store
        self.profile_validator = profile_validator
        self.registry = registry
        self.settings = settings
        self.hooks = hooks
        self.parse_ctx = parse_context
        self.base = settings.base_url.rstrip("/")
        # AuditEvents live in the audit trail, not with the resources (app/audit/fhir.py)
        self.audit_events: Any = None

    # -- pipeline ------------------------------------------------------------------------------

    async def authorize(self, call: Call, interaction: Interaction) -> None:
        """The authorization hook; a refusal is audited (outcome 4) before it is raised. Writes
        are also held to the fail-closed audit policy."""
        try:
            await self.hooks.authorizer.check(call.principal, interaction)
            if interaction.kind in WRITE_KINDS:
                await self.hooks.auditor.admit_write()
        except FhirError as exc:
            exc.audit.append(AuditRecord(
                call.principal, interaction, exc.status,
                detail=exc.issues[0].diagnostics if exc.issues else None))
            raise

    async def audit_refusals(self, exc: FhirError) -> None:
        """Record the refusals an error carries (once), where it is answered."""
        records, exc.audit = exc.audit, []
        for record in records:
            await self.hooks.auditor.record(record)

    async def audit(self, call: Call, interaction: Interaction, status: int,
                    versions: list[StoredVersion], tx: UnitOfWork | None = None, *,
                    written: bool = False, query: str | None = None,
                    detail: str | None = None) -> None:
        """The audit hook: inside `tx` for a write (the AuditEvent commits with it)."""
        await self.hooks.auditor.record(AuditRecord(
            call.principal, interaction, status, versions, written, query, detail), tx)

    def visible(self, call: Call, versions: list[StoredVersion],
                perm: str = "r") -> list[StoredVersion]:
        authz = self.hooks.authorizer
        return [v for v in versions if authz.visible(call.principal, v, perm)]

    async def hidden(self, call: Call, v: StoredVersion, perm: str = "r") -> bool:
        """Whether `v` (a current version) must look absent to the caller. A deletion marker
        carries no content: a restricted caller is judged on the version before it, so a
        hidden deleted resource answers 404, not 410."""
        if self.hooks.authorizer.visible(call.principal, v, perm):
            return False
        return await self._hidden_marker(call, v, perm)

    async def _hidden_marker(self, call: Call, v: StoredVersion, perm: str = "r") -> bool:
        """`hidden` once `visible(v)` said no: only a deletion marker may still be shown."""
        if not v.deleted or v.version <= 1:
            return True
        previous = await self.store.vread(v.type, v.id, v.version - 1)
        return previous is None or not self.hooks.authorizer.visible(call.principal, previous,
                                                                     perm)

    async def check_writable(self, call: Call, resource: dict[str, Any], perm: str) -> None:
        """403 when the content to be written lies outside the caller's grant (e.g. another
        patient's compartment): the client sent it, so saying so reveals nothing."""
        if not self.hooks.authorizer.writable(call.principal, resource, perm):
            raise write_refused(str(resource.get("resourceType")))

    async def check_existing(self, call: Call, existing: StoredVersion | None, perm: str,
                             message: str) -> None:
        """Before changing `existing`: 404 (the same as for a missing resource) when the caller
        may not see it, 403 when they see it but may not change it."""
        if existing is None or not self.hooks.authorizer.restricted(call.principal):
            return
        # absent for the caller when neither its read nor its write grant reaches it (a
        # write-only token, e.g. v1 `patient/Observation.write`, still changes its own data)
        if await self.hidden(call, existing, perm) and await self.hidden(call, existing):
            raise error(404, "not-found", message)
        if not existing.deleted and not self.hooks.authorizer.visible(call.principal, existing,
                                                                      perm):
            raise write_refused(existing.type)

    # -- checks --------------------------------------------------------------------------------

    def check_type(self, type_: str) -> None:
        if not self.registry.is_resource_type(type_):
            raise error(404, "not-supported", f"{type_!r} is not a FHIR R4 resource type "
                        "this server supports (resource types are case-sensitive)")

    def check_not_audit(self, type_: str) -> None:
        if type_ == "AuditEvent":
            raise error(405, "not-supported", "AuditEvents are written by the server only and "
                        "never changed; read or search them")

    def check_id(self, id_: str) -> None:
        if not ID_RE.match(id_):
            raise error(400, "value", f"{id_!r} is not a valid FHIR id: 1-64 characters of "
                        "A-Z, a-z, 0-9, '-' and '.'")

    def parse_body(self, raw: bytes | dict[str, Any], type_: str | None) -> dict[str, Any]:
        if isinstance(raw, dict):
            resource = raw
        else:
            if not raw:
                raise error(400, "required", "the request has no body; send a FHIR resource "
                            "as JSON")
            try:
                resource = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise error(400, "structure", f"the body is not valid JSON: {exc}") from None
        if not isinstance(resource, dict):
            raise error(400, "structure", "the body must be a JSON object holding a FHIR resource")
        rt = resource.get("resourceType")
        if not isinstance(rt, str):
            raise error(400, "required", "the resource has no resourceType", "resourceType")
        if type_ is not None and rt != type_:
            raise error(400, "invalid", f"the body is a {rt} but the URL is for {type_}",
                        "resourceType")
        if type_ is None:
            self.check_type(rt)
        return resource

    def validate(self, resource: dict[str, Any]) -> None:
        """R4 validation of a resource about to be stored, and, when it declares CN profiles
        of fhir_profiles/ in meta.profile, validation against each of them: a resource that
        claims a CN profile is held to it on every write, through the API or an import."""
        issues = [i for i in validate_resource(resource, self.registry)
                  if i.severity in ("error", "fatal")]
        if not issues:
            issues = [i for i in self.profile_validator.declared_issues(resource)
                      if i.severity in ("error", "fatal")]
        if issues:
            raise FhirError(422, [Issue(i.severity, i.code, i.diagnostics, tuple(i.expression))
                                  for i in issues])

    def respond_write(self, call: Call, v: StoredVersion, status: int) -> Result:
        headers = version_headers(v, self.base)
        if call.prefer_return == "minimal":
            return Result(status, None, headers, v)
        if call.prefer_return == "OperationOutcome":
            return Result(status, information(f"{v.type}/{v.id} version {v.version} stored"),
                          headers, v)
        return Result(status, v.body, headers, v)

    # -- read / vread --------------------------------------------------------------------------

    async def read(self, call: Call, type_: str, id_: str) -> Result:
        self.check_type(type_)
        self.check_id(id_)
        if type_ == "AuditEvent" and self.audit_events is not None:
            result: Result = await self.audit_events.read(call, id_)
            return result
        interaction = Interaction("read", type_, id_, in_bundle=call.in_bundle)
        await self.authorize(call, interaction)
        v = await self.store.read(type_, id_)
        if v is None or (not self.hooks.authorizer.visible(call.principal, v)
                         and await self._hidden_marker(call, v)):
            await self.audit(call, interaction, 404, [])
            raise error(404, "not-found", f"{type_}/{id_} is not known")
        if v.deleted:
            await self.audit(call, interaction, 410, [v])
            raise error(410, "deleted", f"{type_}/{id_} was deleted (version {v.version})",
                        headers={"ETag": f'W/"{v.version}"'})
        headers = {"ETag": f'W/"{v.version}"', "Last-Modified": http_date(v.last_updated)}
        if call.if_none_match is not None:
            wanted = parse_etag(call.if_none_match, "If-None-Match") \
                if call.if_none_match.strip() != "*" else v.version
            if wanted == v.version:
                await self.audit(call, interaction, 304, [v])
                return Result(304, None, headers, v)
        if call.if_modified_since is not None:
            from app.search.dates import parse_http_date
            since = parse_http_date(call.if_modified_since)
            if since is not None and instant_to_ms(v.last_updated) // 1000 <= since // 1000:
                await self.audit(call, interaction, 304, [v])
                return Result(304, None, headers, v)
        await self.audit(call, interaction, 200, [v])
        return Result(200, v.body, headers, v)

    async def vread(self, call: Call, type_: str, id_: str, vid: str) -> Result:
        self.check_type(type_)
        self.check_id(id_)
        if type_ == "AuditEvent" and self.audit_events is not None:
            result: Result = await self.audit_events.read(call, id_, vid)
            return result
        interaction = Interaction("vread", type_, id_, in_bundle=call.in_bundle)
        await self.authorize(call, interaction)
        if not is_digits(vid) or int(vid) > MAX_INT:
            raise error(404, "not-found", f"{type_}/{id_} has no version {vid!r}: version ids "
                        "on this server are whole numbers")
        v = await self.store.vread(type_, id_, int(vid))
        if v is None or not self.hooks.authorizer.visible(call.principal, v):
            await self.audit(call, interaction, 404, [])
            raise error(404, "not-found", f"{type_}/{id_} has no version {vid}")
        if v.deleted:
            await self.audit(call, interaction, 410, [v])
            raise error(410, "deleted", f"version {vid} of {type_}/{id_} is a deletion")
        await self.audit(call, interaction, 200, [v])
        return Result(200, v.body, {"ETag": f'W/"{v.version}"',
                                    "Last-Modified": http_date(v.last_updated)}, v)

    # -- create / update / delete --------------------------------------------------------------

    async def create(self, call: Call, type_: str, body: bytes | dict[str, Any],
                     uow: UnitOfWork | None = None, assigned_id: str | None = None) -> Result:
        self.check_type(type_)
        self.check_not_audit(type_)
        resource = self.parse_body(body, type_)
        interaction = Interaction("create", type_, in_bundle=call.in_bundle)
        await self.authorize(call, interaction)
        resource = dict(resource)
        resource.pop("id", None)  # R4: the server ignores an id given on create
        if not call.prevalidated:
            self.validate_with_id(resource, "placeholder")
        await self.check_writable(call, resource, "c")
        async with _maybe_uow(self.store, uow) as tx:
            if call.if_none_exist:
                found = await self.conditional_match(tx, type_, call.if_none_exist,
                                                     "If-None-Exist", call)
                if len(found) == 1:
                    existing = await tx.read(*found[0])
                    assert existing is not None
                    await self.audit(call, interaction, 200, [existing])
                    return self.respond_write(call, existing, 200)
                if len(found) > 1:
                    raise error(412, "duplicate", f"If-None-Exist matched {len(found)} "
                                f"{type_} resources; make the criteria select at most one")
            id_ = assigned_id or await tx.new_id()
            written = await tx.put(type_, id_, resource, method="POST")
            await self.audit(call, interaction, 201, [written.version], tx, written=True)
        return self.respond_write(call, written.version, 201)

    def validate_with_id(self, resource: dict[str, Any], id_: str) -> None:
        probe = dict(resource)
        probe.setdefault("id", id_)
        meta = probe.get("meta")
        if isinstance(meta, dict):
            probe["meta"] = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
            if not probe["meta"]:
                probe.pop("meta")
        self.validate(probe)

    async def update(self, call: Call, type_: str, id_: str, body: bytes | dict[str, Any],
                     uow: UnitOfWork | None = None) -> Result:
        self.check_type(type_)
        self.check_not_audit(type_)
        self.check_id(id_)
        resource = self.parse_body(body, type_)
        if "id" not in resource:
            raise error(400, "required", f"the {type_} in the body has no id; an update must "
                        f"carry id {id_!r} (the id in the URL)", f"{type_}.id")
        if resource.get("id") != id_:
            raise error(400, "invalid", f"the body's id {resource.get('id')!r} does not match "
                        f"the URL's id {id_!r}", f"{type_}.id")
        interaction = Interaction("update", type_, id_, in_bundle=call.in_bundle)
        await self.authorize(call, interaction)
        if not call.prevalidated:
            self.validate_with_id(resource, id_)
        if_match = parse_etag(call.if_match, "If-Match")
        async with _maybe_uow(self.store, uow) as tx:
            if self.hooks.authorizer.restricted(call.principal):
                existing = await tx.read(type_, id_)
                await self.check_existing(call, existing, "u", f"{type_}/{id_} is not known")
                creates = existing is None or existing.deleted
                if creates:  # an update that creates needs the create permission too
                    await self.authorize(call, Interaction("create", type_, id_,
                                                           in_bundle=call.in_bundle))
                await self.check_writable(call, resource, "c" if creates else "u")
            try:
                written = await tx.put(type_, id_, resource, method="PUT", if_match=if_match)
            except VersionConflict as exc:
                raise error(412, "conflict", f"If-Match expected version {exc.expected} of "
                            f"{type_}/{id_} but the current version is {exc.current}; read it "
                            "again and reapply your change") from None
            status = 201 if written.created else 200
            await self.audit(call, interaction, status, [written.version], tx, written=True)
        return self.respond_write(call, written.version, status)

    async def conditional_update(self, call: Call, type_: str, query: str,
                                 body: bytes | dict[str, Any],
                                 uow: UnitOfWork | None = None) -> Result:
        self.check_type(type_)
        self.check_not_audit(type_)
        resource = self.parse_body(body, type_)
        async with _maybe_uow(self.store, uow) as tx:
            found = await self.conditional_match(tx, type_, query, "conditional update", call)
            if len(found) > 1:
                raise error(412, "multiple-matches", f"the conditional update criteria matched "
                            f"{len(found)} {type_} resources; they must match at most one")
            if found:
                id_ = found[0][1]
                if "id" in resource and resource["id"] != id_:
                    raise error(400, "invalid", f"the body's id {resource['id']!r} is not the id "
                                f"of the matching resource {id_!r}", f"{type_}.id")
                return await self.update(call, type_, id_, {**resource, "id": id_}, tx)
            if "id" in resource:
                return await self.update(call, type_, str(resource["id"]), resource, tx)
            return await self.create(call, type_, resource, tx)

    async def delete(self, call: Call, type_: str, id_: str,
                     uow: UnitOfWork | None = None) -> Result:
        self.check_type(type_)
        self.check_not_audit(type_)
        self.check_id(id_)
        interaction = Interaction("delete", type_, id_, in_bundle=call.in_bundle)
        await self.authorize(call, interaction)
        if_match = parse_etag(call.if_match, "If-Match")
        async with _maybe_uow(self.store, uow) as tx:
            existing = await tx.read(type_, id_)
            if existing is None:
                raise error(404, "not-found", f"{type_}/{id_} is not known")
            await self.check_existing(call, existing, "d", f"{type_}/{id_} is not known")
            try:
                written = await tx.delete(type_, id_, if_match=if_match)
            except VersionConflict as exc:
                raise error(412, "conflict", f"If-Match expected version {exc.expected} of "
                            f"{type_}/{id_} but the current version is {exc.current}") from None
            versions = [written.version] if written else [existing]
            await self.audit(call, interaction, 204, versions, tx, written=written is not None)
        headers = {"ETag": f'W/"{versions[0].version}"'} if written else {}
        return Result(204, None, headers)

    async def conditional_delete(self, call: Call, type_: str, query: str,
                                 uow: UnitOfWork | None = None) -> Result:
        self.check_type(type_)
        self.check_not_audit(type_)
        async with _maybe_uow(self.store, uow) as tx:
            found = await self.conditional_match(tx, type_, query, "conditional delete", call)
            if len(found) > 1:
                raise error(412, "multiple-matches", f"the conditional delete criteria matched "
                            f"{len(found)} {type_} resources; this server deletes one at a time")
            if not found:
                return Result(204, None)
            return await self.delete(call, type_, found[0][1], tx)

    async def patch(self, call: Call, type_: str, id_: str, body: bytes | Any,
                    uow: UnitOfWork | None = None) -> Result:
        self.check_type(type_)
        self.check_not_audit(type_)
        self.check_id(id_)
        interaction = Interaction("patch", type_, id_, in_bundle=call.in_bundle)
        await self.authorize(call, interaction)
        if isinstance(body, bytes):
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise error(400, "structure", f"the JSON Patch document is not JSON: {exc}") \
                    from None
        else:
            document = body
        if_match = parse_etag(call.if_match, "If-Match")
        async with _maybe_uow(self.store, uow) as tx:
            current = await tx.read(type_, id_)
            if current is None or current.deleted:
                raise error(404, "not-found", f"{type_}/{id_} is not known or was deleted")
            await self.check_existing(call, current, "u",
                                      f"{type_}/{id_} is not known or was deleted")
            if if_match is not None and if_match != current.version:
                raise error(412, "conflict", f"If-Match expected version {if_match} of "
                            f"{type_}/{id_} but the current version is {current.version}")
            try:
                patched = apply_json_patch(orjson.loads(current.body), document)
            except PatchError as exc:
                raise error(422, "processing", f"the patch cannot be applied: {exc}",
                            exc.path or "") from None
            self.validate_with_id(patched, id_)
            if self.hooks.authorizer.restricted(call.principal):
                await self.check_writable(call, patched, "u")
            written = await tx.put(type_, id_, patched, method="PATCH",
                                   if_match=current.version)
            await self.audit(call, interaction, 200, [written.version], tx, written=True)
        return self.respond_write(call, written.version, 200)

    async def conditional_patch(self, call: Call, type_: str, query: str, body: bytes | Any,
                                uow: UnitOfWork | None = None) -> Result:
        self.check_type(type_)
        self.check_not_audit(type_)
        async with _maybe_uow(self.store, uow) as tx:
            found = await self.conditional_match(tx, type_, query, "conditional patch", call)
            if len(found) != 1:
                raise error(412 if found else 404, "multiple-matches" if found else "not-found",
                            f"the conditional patch criteria matched {len(found)} {type_} "
                            "resources; they must match exactly one")
            return await self.patch(call, type_, found[0][1], body, tx)

    async def conditional_match(self, tx: UnitOfWork, type_: str, query: str,
                                what: str, call: Call) -> list[tuple[str, str]]:
        """Resources matching the search criteria of a conditional interaction (strictly parsed),
        among those the caller may search: hidden resources do not match."""
        params = parse_qsl(query.lstrip("?"), keep_blank_values=True)
        if not params:
            raise error(400, "required", f"{what} needs search criteria, e.g. "
                        "identifier=urn:oid:2.16.156.10011.1.3|11010519491231002X")
        parsed, issues = parse_search((type_,), params, self.parse_ctx)
        if issues:
            raise FhirError(400, issues)
        parsed = self.hooks.authorizer.restrict(call.principal, parsed, "s")
        return await tx.search_ids(parsed, 3)

    # -- history -------------------------------------------------------------------------------

    async def history(self, call: Call, type_: str | None, id_: str | None,
                      params: list[tuple[str, str]]) -> Result:
        if type_ is not None:
            self.check_type(type_)
            if type_ == "AuditEvent":
                raise error(400, "not-supported", "AuditEvents have a single version and no "
                            "history: read or search them")
        if id_ is not None:
            self.check_id(id_)
        kind = "history-instance" if id_ else "history-type" if type_ else "history-system"
        interaction = Interaction(kind, type_, id_, in_bundle=call.in_bundle)
        await self.authorize(call, interaction)
        values: dict[str, str] = {}
        for k, value in params:
            if k in ("_since", "_at", "_count", "_snapshot", "_offset"):
                values[k] = value
            elif k not in ("_format", "_pretty", "_summary", "_elements") and call.strict:
                raise error(400, "not-supported", f"history does not take parameter {k!r}", k)
        try:
            since = values.get("_since")
            at = values.get("_at")
            if since is not None:
                instant_to_ms(since)
            if at is not None:
                instant_to_ms(at)
            count = min(int(values.get("_count", self.settings.default_page_size)),
                        self.settings.max_page_size)
            offset = int(values.get("_offset", 0))
            snapshot = int(values["_snapshot"]) if "_snapshot" in values else None
            if count < 0 or offset < 0 or (snapshot is not None and snapshot < 0):
                raise ValueError("negative numbers are not allowed")
            if offset > MAX_INT or (snapshot is not None and snapshot > MAX_INT):
                raise ValueError("number out of range")
        except ValueError as exc:
            raise error(400, "invalid", f"bad history parameter: {exc}. _since and _at are FHIR "
                        "dateTimes, _count and _offset non-negative whole numbers") from None
        restricted = self.hooks.authorizer.restricted(call.principal)
        if id_ is not None and restricted:
            current = await self.store.read(type_ or "", id_)
            if current is None or await self.hidden(call, current):
                raise error(404, "not-found", f"{type_}/{id_} is not known")
        access: tuple[Clause, ...] = ()
        if restricted and id_ is None:
            # only versions of resources the caller may see, so paging and the `next` link
            # follow the permitted set, not the whole server's history
            types = (type_,) if type_ else tuple(self.registry.resource_types)
            found = self.hooks.authorizer.access_clauses(call.principal, types, "s")
            access = tuple(found) if found is not None else ()
        page = await self.store.history(HistoryQuery(type_, id_, since, at, count, offset,
                                                     snapshot, access))
        if id_ is not None and page.total == 0 and await self.store.read(type_ or "", id_) is None:
            raise error(404, "not-found", f"{type_}/{id_} is not known")
        if id_ is not None and restricted:
            # the resource is visible: its deletions are part of its story
            versions = [v for v in page.versions
                        if v.deleted or self.hooks.authorizer.visible(call.principal, v)]
        else:
            versions = self.visible(call, page.versions)
        path = "/".join(p for p in (type_, id_) if p) + ("/" if type_ else "") + "_history"
        keep = [(k, value) for k, value in params if k in ("_since", "_at")]
        links = [{"relation": "self", "url": self._url(path, [*keep, ("_count", str(count)),
                                                              ("_offset", str(offset))])}]
        if offset + count < page.total:
            links.append({"relation": "next", "url": self._url(path, [
                *keep, ("_count", str(count)), ("_snapshot", str(page.snapshot)),
                ("_offset", str(offset + count))])})
        if offset > 0:
            links.append({"relation": "previous", "url": self._url(path, [
                *keep, ("_count", str(count)), ("_snapshot", str(page.snapshot)),
                ("_offset", str(max(0, offset - count)))])})
        entries = []
        for v in versions:
            entry: dict[str, Any] = {"fullUrl": f"{self.base}/{v.type}/{v.id}"}
            if not v.deleted:
                entry["resource"] = orjson.loads(v.body)
            entry["request"] = {"method": v.method if v.method != "PATCH" else "PATCH",
                                "url": f"{v.type}/{v.id}" if v.method != "POST" else v.type}
            entry["response"] = {"status": "201 Created" if v.method == "POST" else
                                 "204 No Content" if v.deleted else "200 OK",
                                 "etag": f'W/"{v.version}"', "lastModified": v.last_updated}
            entries.append(entry)
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history",
                                  "total": page.total, "link": links, "entry": entries}
        if restricted and id_ is None:
            # Bundle.total is optional in R4: counting only visible versions would mean reading
            # every version, and the unfiltered count would reveal hidden ones.
            del bundle["total"]
        await self.audit(call, interaction, 200, versions, query=urlencode(params))
        return Result(200, bundle)

    # -- search --------------------------------------------------------------------------------

    async def search(self, call: Call, types: tuple[str, ...], params: list[tuple[str, str]],
                     path: str) -> Result:
        for t in types:
            self.check_type(t)
        if types == ("AuditEvent",) and self.audit_events is not None:
            result: Result = await self.audit_events.search(call, params)
            return result
        interaction = Interaction("search-type" if len(types) == 1 else "search-system",
                                  types[0] if len(types) == 1 else None, in_bundle=call.in_bundle)
        await self.authorize(call, interaction)
        token = next((v for k, v in params if k == "_page_token"), None)
        offset_raw = next((v for k, v in params if k == "_offset"), "0")
        criteria = [(k, v) for k, v in params if k not in PAGING_PARAMS]
        query, issues = parse_search(types, criteria, self.parse_ctx)
        if issues and call.strict:
            raise FhirError(400, issues)
        query = self.hooks.authorizer.restrict(call.principal, query, "s")
        unknown_elements = self._check_elements(query)
        if unknown_elements and call.strict:
            raise error(400, "invalid", f"_elements names unknown elements: "
                        f"{', '.join(unknown_elements)}", "_elements")
        page: SearchPage | None
        if token is not None:
            if not is_digits(offset_raw) or int(offset_raw) > MAX_INT:
                raise error(400, "invalid", "_offset must be a whole number below 2^62",
                            "_offset")
            page = await self.store.search_page(token, int(offset_raw), query.count, query)
            if page is None:
                raise error(410, "expired", "these search results have expired; run the search "
                            "again from its first page")
        elif query.summary == "count":
            query.count = 0
            page = await self.store.search(query)
        else:
            page = await self.store.search(query)
        bundle = self._search_bundle(call, query, page, path, issues)
        returned = [*page.matches, *page.included]
        if self.hooks.authorizer.restricted(call.principal):  # only what the bundle holds
            returned = [*self.visible(call, page.matches, "s"), *self.visible(call, page.included)]
        await self.audit(call, interaction, 200, returned, query=urlencode(criteria))
        return Result(200, bundle)

    def _check_elements(self, query: SearchQuery) -> list[str]:
        if not query.elements or len(query.resource_types) != 1:
            return []
        known = {p.split(".")[0].replace("[x]", "")
                 for p in self.registry.elements(query.resource_types[0])}
        return [e for e in query.elements if e not in known]

    def _search_bundle(self, call: Call, query: SearchQuery, page: SearchPage, path: str,
                       issues: list[Issue]) -> dict[str, Any]:
        applied = query.applied
        count = query.count
        links = [{"relation": "self", "url": self._url(path, applied)}]
        if page.snapshot_id is not None:
            def page_url(offset: int) -> str:
                return self._url(path, [*[(k, v) for k, v in applied if k != "_count"],
                                        ("_count", str(count)),
                                        ("_page_token", page.snapshot_id or ""),
                                        ("_offset", str(offset))])
            if page.has_more:
                links.append({"relation": "next", "url": page_url(page.offset + count)})
            if page.offset > 0:
                links.append({"relation": "previous",
                              "url": page_url(max(0, page.offset - count))})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if query.total != "none" or query.summary == "count":
            bundle["total"] = page.total
        bundle["link"] = links
        entries = []
        for v in self.visible(call, page.matches, "s"):
            entries.append(self._entry(v, query, "match"))
        for v in self.visible(call, page.included):
            entries.append(self._entry(v, query, "include"))
        if issues:
            entries.append({"resource": {"resourceType": "OperationOutcome", "issue": [
                {**i.to_json(), "severity": "warning"} for i in issues]},
                "search": {"mode": "outcome"}})
        if query.summary != "count" and entries:
            bundle["entry"] = entries
        return bundle

    def _entry(self, v: StoredVersion, query: SearchQuery, mode: str) -> dict[str, Any]:
        resource = orjson.loads(v.body)
        if query.summary in ("true", "text", "data"):
            resource = apply_summary(resource, query.summary, self.registry)
        elif query.elements and mode == "match":
            resource, _ = apply_elements(resource, list(query.elements), self.registry)
        return {"fullUrl": f"{self.base}/{v.type}/{v.id}", "resource": resource,
                "search": {"mode": mode}}

    def _url(self, path: str, params: list[tuple[str, str]]) -> str:
        url = f"{self.base}/{path}" if path else self.base
        return f"{url}?{urlencode(params)}" if params else url


class _maybe_uow:
    """Use the caller's unit of work (inside a transaction), or open and commit a new one."""

    def __init__(self, store: Store, uow: UnitOfWork | None) -> None:
        self.store = store
        self.uow = uow
        self._cm: Any = None

    async def __aenter__(self) -> UnitOfWork:
        if self.uow is not None:
            return self.uow
        self._cm = self.store.unit_of_work()
        tx: UnitOfWork = await self._cm.__aenter__()
        return tx

    async def __aexit__(self, *exc: Any) -> None:
        if self._cm is not None:
            await self._cm.__aexit__(*exc)

"""AuditEvent on the FHIR API: read, search and `$verify`, and `$verify` of resource versions.

AuditEvents are not kept with the clinical resources: they live in the store's audit trail
(`audit` table), written by the server only, one version each. Reads and searches go through the
same authorize → (access check) → audit steps as every other interaction; a patient's app with
`patient/AuditEvent.rs` sees exactly the entries about that patient (who accessed their data).

Search parameters: `patient`, `agent` (the user's reference), `date` (with ge/gt/le/lt/eq and
any precision), `action`, `outcome`, `_count`; results are newest first. Anything else is
answered 400 with the list, rather than silently ignored: an audit query must not look
narrower than it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import orjson

from app.audit.hashing import Keyer
from app.audit.verify import (
    ChainError,
    ChainReader,
    Verdict,
    parameters,
    proof_extension,
    verify_event,
    verify_version,
)
from app.chain.node import ChainHandle
from app.fhir.outcome import FhirError, error
from app.pipeline.hooks import Interaction
from app.search.dates import date_range, format_instant_ms
from app.storage.base import AuditQuery, ChainProof, StoredAudit, StoredVersion
from app.text import is_digits

AUDIT_TYPE = "AuditEvent"
SEARCH_PARAMS = ("patient", "agent", "date", "action", "outcome", "_count", "_page_token")
_PREFIXES = ("ge", "gt", "le", "lt", "eq")


class AuditEvents:
    def __init__(self, service: Any, keyer: Keyer,
                 handle: Callable[[], ChainHandle | None]) -> None:
        self.service = service  # FhirService (typed loosely: it imports us)
        self.store = service.store
        self.keyer = keyer
        self.handle = handle
        self.base = service.base

    # -- rendering -----------------------------------------------------------------------

    def render(self, stored: StoredAudit) -> dict[str, Any]:
        event: dict[str, Any] = orjson.loads(stored.row.body)
        event["meta"] = {"versionId": "1",
                         "lastUpdated": format_instant_ms(stored.row.recorded_ms)}
        if stored.proof is not None:
            p = stored.proof
            event.setdefault("extension", []).append(
                proof_extension(p.chain_id, p.contract, p.tx_hash, p.block, p.log_index))
        return event

    def as_version(self, event: dict[str, Any]) -> StoredVersion:
        return StoredVersion(AUDIT_TYPE, event["id"], 1, event["meta"]["lastUpdated"], False,
                             orjson.dumps(event))

    # -- read ----------------------------------------------------------------------------

    async def _visible_event(self, call: Any, id_: str, interaction: Interaction,
                             ) -> tuple[dict[str, Any], StoredVersion]:
        stored = await self.store.audit_get(id_)
        if stored is not None:
            event = self.render(stored)
            version = self.as_version(event)
            if self.service.hooks.authorizer.visible(call.principal, version):
                return event, version
        await self.service.audit(call, interaction, 404, [])
        raise error(404, "not-found", f"AuditEvent/{id_} is not known")

    async def read(self, call: Any, id_: str, vid: str | None = None) -> Any:
        from app.fhir.interactions import Result

        interaction = Interaction("read" if vid is None else "vread", AUDIT_TYPE, id_,
                                  in_bundle=call.in_bundle)
        await self.service.authorize(call, interaction)
        if vid is not None and vid != "1":
            await self.service.audit(call, interaction, 404, [])
            raise error(404, "not-found", f"AuditEvent/{id_} has no version {vid!r}: "
                        "AuditEvents are never changed, their only version is 1")
        _, version = await self._visible_event(call, id_, interaction)
        await self.service.audit(call, interaction, 200, [version])
        return Result(200, version.body, {"ETag": 'W/"1"'}, version)

    # -- search --------------------------------------------------------------------------

    async def search(self, call: Any, params: list[tuple[str, str]]) -> Any:
        from app.fhir.interactions import Result

        interaction = Interaction("search-type", AUDIT_TYPE, in_bundle=call.in_bundle)
        await self.service.authorize(call, interaction)
        query = self.parse(params)
        principal = call.principal
        authz = self.service.hooks.authorizer
        if authz.restricted(principal) and principal.patient:
            # a patient-context token: its patient's entries only, whatever was asked
            if query.patient not in (None, principal.patient):
                query = AuditQuery(patient="\x00none", count=query.count)
            else:
                query = _replace(query, patient=principal.patient)
        rows, total = await self.store.audit_search(query)
        events = [self.render(r) for r in rows]
        versions = [self.as_version(e) for e in events]
        shown = [(e, v) for e, v in zip(events, versions, strict=True)
                 if authz.visible(principal, v, "s")]
        criteria = [(k, v) for k, v in params if k != "_page_token"]
        links = [{"relation": "self", "url": self._url(params)}]
        if rows and len(rows) == query.count:
            links.append({"relation": "next",
                          "url": self._url([*criteria, ("_page_token", str(rows[-1].seq))])})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                                  "total": total, "link": links}
        if shown:
            bundle["entry"] = [{"fullUrl": f"{self.base}/AuditEvent/{e['id']}", "resource": e,
                                "search": {"mode": "match"}} for e, _ in shown]
        await self.service.audit(call, interaction, 200, [v for _, v in shown],
                                 query=urlencode(criteria))
        return Result(200, bundle)

    def _url(self, params: list[tuple[str, str]]) -> str:
        url = f"{self.base}/AuditEvent"
        return f"{url}?{urlencode(params)}" if params else url

    def parse(self, params: list[tuple[str, str]]) -> AuditQuery:
        settings = self.service.settings
        fields: dict[str, Any] = {"count": settings.default_page_size}
        for name, value in params:
            if name not in SEARCH_PARAMS:
                raise error(400, "not-supported", f"AuditEvent cannot be searched by {name!r}; "
                            f"supported: {', '.join(SEARCH_PARAMS)}", name)
            if name == "_count":
                if not is_digits(value):
                    raise error(400, "invalid", "_count must be a whole number", "_count")
                fields["count"] = min(int(value), settings.max_page_size)
            elif name == "_page_token":
                if not is_digits(value) or len(value) > 18:
                    raise error(400, "invalid", "this paging link is not valid; run the "
                                "search again", "_page_token")
                fields["before_seq"] = int(value)
            elif name == "patient":
                fields["patient"] = _reference_id(value, "Patient", "patient")
            elif name == "agent":
                if "/" not in value:
                    raise error(400, "invalid", "agent must be a reference such as "
                                "Practitioner/doc-001 or Patient/pat-000001", "agent")
                fields["agent"] = value.split("/_history")[0].removeprefix(self.base + "/")
            elif name == "action":
                if value not in ("C", "R", "U", "D", "E"):
                    raise error(400, "invalid", "action is one of C, R, U, D, E", "action")
                fields["action"] = value
            elif name == "outcome":
                if value not in ("0", "4", "8", "12"):
                    raise error(400, "invalid", "outcome is one of 0, 4, 8, 12", "outcome")
                fields["outcome"] = value
            elif name == "date":
                self._date(value, fields)
        return AuditQuery(**fields)

    def _date(self, value: str, fields: dict[str, Any]) -> None:
        prefix = value[:2] if value[:2] in _PREFIXES else "eq"
        text = value[2:] if value[:2] in _PREFIXES else value
        try:
            lo, hi = date_range(text, self.service.parse_ctx.default_tz)
        except ValueError:
            raise error(400, "invalid", f"date {value!r} is not a FHIR date/dateTime (e.g. "
                        "ge2026-11-23 or lt2026-11-23T08:00:00+08:00)", "date") from None
        since, until = fields.get("since_ms"), fields.get("until_ms")
        if prefix in ("ge", "eq"):
            since = lo if since is None else max(since, lo)
        if prefix == "gt":
            since = hi if since is None else max(since, hi)
        if prefix in ("le", "eq"):
            until = hi if until is None else min(until, hi)
        if prefix == "lt":
            until = lo if until is None else min(until, lo)
        fields["since_ms"], fields["until_ms"] = since, until

    # -- $verify ---------------------------------------------------------------------------

    def _reader(self) -> tuple[ChainReader, ChainHandle]:
        handle = self.handle()
        if handle is None:
            raise error(503, "transient", "this server is not connected to a chain "
                        "(YILIAN_CHAIN=off or not deployed yet), so nothing can be verified now")
        return ChainReader(handle.rpc_url, timeout=5.0), handle

    async def verify_event(self, call: Any, id_: str) -> Any:
        from app.fhir.interactions import Result

        interaction = Interaction("operation", AUDIT_TYPE, id_, "$verify", call.in_bundle,
                                  permissions="r")
        await self.service.authorize(call, interaction)
        event, version = await self._visible_event(call, id_, interaction)
        reader, handle = self._reader()
        try:
            verdict = await asyncio.to_thread(verify_event, event, reader,
                                              audit_log=handle.contracts.get("AuditLog"))
        except ChainError as exc:
            raise _unreachable(exc) from None
        await self.service.audit(call, interaction, 200, [version])
        return Result(200, parameters(verdict))

    async def verify_version(self, call: Any, type_: str, id_: str, vid: str) -> Any:
        from app.fhir.interactions import Result

        svc = self.service
        svc.check_type(type_)
        svc.check_id(id_)
        interaction = Interaction("operation", type_, id_, "$verify", call.in_bundle,
                                  permissions="r")
        await svc.authorize(call, interaction)
        v = await self.store.vread(type_, id_, int(vid)) if is_digits(vid) and len(vid) < 18 \
            else None
        if v is None or not svc.hooks.authorizer.visible(call.principal, v):
            await svc.audit(call, interaction, 404, [])
            raise error(404, "not-found", f"{type_}/{id_} has no version {vid}")
        found = await self.store.version_proof(type_, id_, v.version)
        if found is None:
            verdict = Verdict(False, "this version was never queued for the chain (it was "
                              "written before auditing was switched on)")
        elif found[1] is None:
            verdict = Verdict(False, "not anchored yet: the version waits in the outbox or its "
                              "transaction awaits confirmation")
        else:
            reader, _ = self._reader()
            # bytes as stored; text if someone rewrote the row with SQL string functions
            body = v.body if isinstance(v.body, bytes) else str(v.body).encode()
            try:
                verdict = await asyncio.to_thread(
                    verify_version, type_, id_, v.version, body, _proof_dict(found[1]),
                    self.keyer.version(type_, id_, v.version), reader)
            except ChainError as exc:
                raise _unreachable(exc) from None
        await svc.audit(call, interaction, 200, [v])
        return Result(200, parameters(verdict))


def _proof_dict(p: ChainProof) -> dict[str, Any]:
    return {"chainId": p.chain_id, "contract": p.contract, "txHash": p.tx_hash,
            "blockNumber": p.block, "logIndex": p.log_index}


def _unreachable(exc: Exception) -> FhirError:
    return error(503, "transient", f"the chain could not be reached to verify: {exc}",
                 headers={"Retry-After": "5"})


def _reference_id(value: str, type_: str, name: str) -> str:
    ref = value.split("/_history")[0]
    if "/" in ref:
        t, _, i = ref.rpartition("/")
        if not t.endswith(type_):
            raise error(400, "invalid", f"{name} must reference a {type_}, got {value!r}", name)
        ref = i
    if not ref:
        raise error(400, "invalid", f"{name} needs a value", name)
    return ref


def _replace(query: AuditQuery, **changes: Any) -> AuditQuery:
    from dataclasses import replace
    return replace(query, **changes)



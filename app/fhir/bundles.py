"""Transaction and batch Bundles (http://hl7.org/fhir/R4/http.html#transaction).

A transaction runs in one unit of work: every entry succeeds or the store is left as it was
(one SQLite transaction, so a process killed midway leaves nothing behind). Entries are
processed in the order R4 prescribes — DELETE, POST, PUT/PATCH, GET/HEAD — after every
`urn:uuid:` / `urn:oid:` fullUrl of a created resource and every conditional reference
(`Patient?identifier=…`) has been resolved to a real `Type/id`. A batch processes each entry on its
own and answers each with its own status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from app.fhir.interactions import Call, FhirService, Result, parse_etag
from app.fhir.outcome import FhirError, Issue, error, outcome
from app.pipeline.hooks import Interaction
from app.storage.base import UnitOfWork

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content",
               304: "304 Not Modified", 400: "400 Bad Request", 404: "404 Not Found",
               410: "410 Gone", 412: "412 Precondition Failed", 422: "422 Unprocessable Entity"}
LOCAL_REF = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


@dataclass
class Entry:
    index: int
    method: str
    url: str
    full_url: str | None
    resource: dict[str, Any] | None
    request: dict[str, Any]


def _status_line(code: int) -> str:
    return STATUS_TEXT.get(code, str(code))


class BundleProcessor:
    def __init__(self, service: FhirService) -> None:
        self.service = service

    async def process(self, call: Call, body: bytes | dict[str, Any]) -> Result:
        # The bundle itself needs only a caller (401 without a token); each entry is then
        # authorized one by one as the interaction it is.
        await self.service.authorize(call, Interaction("bundle", permissions=""))
        bundle = self.service.parse_body(body, "Bundle")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise error(400, "invalid", f"POST to the base URL takes a Bundle of type transaction "
                        f"or batch, not {kind!r}", "Bundle.type")
        raw_entries = bundle.get("entry", [])
        if not isinstance(raw_entries, list):
            raise error(400, "structure", "Bundle.entry must be an array", "Bundle.entry")
        if len(raw_entries) > self.service.settings.max_bundle_entries:
            raise error(413, "too-costly", f"the Bundle has {len(raw_entries)} entries; the limit "
                        f"is {self.service.settings.max_bundle_entries}", "Bundle.entry")
        entries = [self._entry(i, e, kind) for i, e in enumerate(raw_entries)]
        sub = Call(call.principal, call.prefer_return, call.strict, in_bundle=True)
        if kind == "batch":
            return await self._batch(sub, entries)
        return await self._transaction(sub, entries)

    def _entry(self, i: int, raw: Any, kind: str) -> Entry:
        where = f"Bundle.entry[{i}]"
        if not isinstance(raw, dict):
            raise error(400, "structure", f"{where} must be an object", where)
        request = raw.get("request")
        if not isinstance(request, dict):
            raise error(400, "required", f"{where} has no request (method and url)",
                        f"{where}.request")
        method, url = request.get("method"), request.get("url")
        if not isinstance(method, str) or method not in ORDER:
            raise error(400, "value", f"{where}.request.method must be one of GET, HEAD, POST, "
                        f"PUT, PATCH, DELETE, got {method!r}", f"{where}.request.method")
        if not isinstance(url, str) or not url:
            raise error(400, "required", f"{where}.request.url is missing", f"{where}.request.url")
        resource = raw.get("resource")
        if resource is not None and not isinstance(resource, dict):
            raise error(400, "structure", f"{where}.resource must be an object",
                        f"{where}.resource")
        if method in ("POST", "PUT") and resource is None:
            raise error(400, "required", f"{where}: a {method} entry needs a resource",
                        f"{where}.resource")
        for key in ("ifMatch", "ifNoneMatch", "ifModifiedSince", "ifNoneExist"):
            if key in request and not isinstance(request[key], str):
                raise error(400, "value", f"{where}.request.{key} must be a string",
                            f"{where}.request.{key}")
        full_url = raw.get("fullUrl")
        base = self.service.base + "/"
        if url.startswith(base):
            url = url[len(base):]
        return Entry(i, method, url.lstrip("/"), full_url if isinstance(full_url, str) else None,
                     resource, request)

    # -- batch ---------------------------------------------------------------------------------

    async def _batch(self, call: Call, entries: list[Entry]) -> Result:
        responses: list[dict[str, Any]] = []
        for entry in entries:
            try:
                result = await self._run(call, entry, None)
                responses.append(self._response(result))
            except FhirError as exc:
                await self.service.audit_refusals(exc)
                responses.append({"response": {"status": _status_line(exc.status),
                                               "outcome": outcome(exc.issues)}})
        return Result(200, {"resourceType": "Bundle", "type": "batch-response",
                            "entry": responses})

    # -- transaction ---------------------------------------------------------------------------

    async def _transaction(self, call: Call, entries: list[Entry]) -> Result:
        self._check_unique_targets(entries)
        self._validate_entries(entries)
        call = Call(call.principal, call.prefer_return, call.strict, in_bundle=True,
                    prevalidated=True)
        results: dict[int, Result] = {}
        try:
            async with self.service.store.unit_of_work() as tx:
                ids = await self._assign_ids(tx, entries, call)
                for entry in entries:
                    if entry.resource is not None:
                        entry.resource = await self._resolve_references(tx, entry, ids, call)
                for entry in sorted(entries, key=lambda e: ORDER[e.method]):
                    try:
                        results[entry.index] = await self._run(call, entry, tx,
                                                               ids.get(entry.full_url or ""))
                    except FhirError as exc:
                        raise _with_entry(exc, entry) from None
        except FhirError:
            raise
        return Result(200, {"resourceType": "Bundle", "type": "transaction-response",
                            "entry": [self._response(results[e.index]) for e in entries]})

    def _validate_entries(self, entries: list[Entry]) -> None:
        """Validate every created or updated resource before the transaction takes the lock."""
        for e in entries:
            if e.method not in ("POST", "PUT") or e.resource is None:
                continue
            type_ = e.url.partition("?")[0].split("/")[0]
            if e.resource.get("resourceType") != type_ or not self.service.registry \
                    .is_resource_type(type_):
                raise error(400, "invalid", f"Bundle.entry[{e.index}]: the resource is a "
                            f"{e.resource.get('resourceType')!r} but the request url is for "
                            f"{type_!r}", f"Bundle.entry[{e.index}].resource.resourceType")
            try:
                resource = dict(e.resource)
                if e.method == "POST":
                    resource.pop("id", None)
                self.service.validate_with_id(resource, str(resource.get("id") or "new"))
            except FhirError as exc:
                raise _with_entry(exc, e) from None

    def _check_unique_targets(self, entries: list[Entry]) -> None:
        seen: dict[str, int] = {}
        for e in entries:
            if e.method in ("PUT", "DELETE", "PATCH") and "?" not in e.url:
                key = e.url.split("/_history")[0]
                if key in seen:
                    raise error(400, "invalid", f"Bundle.entry[{seen[key]}] and "
                                f"Bundle.entry[{e.index}] both change {key}; a transaction may "
                                "touch each resource once", f"Bundle.entry[{e.index}].request.url")
                seen[key] = e.index
        full_urls: dict[str, int] = {}
        for e in entries:
            if e.full_url and e.method in ("POST", "PUT"):
                if e.full_url in full_urls:
                    raise error(400, "invalid", f"fullUrl {e.full_url} appears twice (entries "
                                f"{full_urls[e.full_url]} and {e.index})",
                                f"Bundle.entry[{e.index}].fullUrl")
                full_urls[e.full_url] = e.index

    async def _assign_ids(self, tx: UnitOfWork, entries: list[Entry],
                          call: Call) -> dict[str, str]:
        """fullUrl → `Type/id` for every entry that creates or names a resource."""
        ids: dict[str, str] = {}
        for e in entries:
            if e.resource is None or not e.full_url:
                continue
            rtype = e.resource.get("resourceType")
            if e.method == "POST":
                if e.request.get("ifNoneExist"):
                    found = await self.service.conditional_match(
                        tx, str(rtype), str(e.request["ifNoneExist"]), "ifNoneExist", call)
                    if len(found) == 1:
                        ids[e.full_url] = f"{found[0][0]}/{found[0][1]}"
                        continue
                ids[e.full_url] = f"{rtype}/{await tx.new_id()}"
            elif e.method == "PUT" and "?" in e.url:
                type_, _, query = e.url.partition("?")
                found = await self.service.conditional_match(tx, type_, query,
                                                             "conditional update", call)
                if len(found) == 1:
                    ids[e.full_url] = f"{found[0][0]}/{found[0][1]}"
                elif not found:
                    given = e.resource.get("id")
                    new_id = given if isinstance(given, str) else await tx.new_id()
                    ids[e.full_url] = f"{type_}/{new_id}"
            elif e.method == "PUT":
                ids[e.full_url] = e.url.split("?")[0]
        return ids

    async def _resolve_references(self, tx: UnitOfWork, entry: Entry,
                                  ids: dict[str, str], call: Call) -> dict[str, Any]:
        """Rewrite `urn:uuid:` and conditional references to the `Type/id` they stand for."""
        assert entry.resource is not None
        root = f"Bundle.entry[{entry.index}].resource"
        found: list[tuple[str, str]] = []
        _collect_references(entry.resource, root, found)
        targets: dict[str, str] = {}
        for ref, where in found:
            if ref in ids or ref in targets:
                continue
            if ref.startswith(("urn:uuid:", "urn:oid:")):
                raise error(404, "not-found", f"reference {ref} at {where} names no entry of "
                            "this transaction", where)
            if "?" in ref and not ref.startswith(("http://", "https://")):
                type_, _, query = ref.partition("?")
                self.service.check_type(type_)
                # hidden resources do not match: a reference to one is "not found"
                matches = await self.service.conditional_match(tx, type_, query,
                                                               "conditional reference", call)
                if len(matches) != 1:
                    raise error(412, "multiple-matches" if matches else "not-found",
                                f"conditional reference {ref} at {where} matched "
                                f"{len(matches)} resources; it must match exactly one", where)
                targets[ref] = f"{matches[0][0]}/{matches[0][1]}"
        if not found or not (ids or targets):
            return entry.resource  # nothing to rewrite (no fullUrls, no conditional references)
        resolved: dict[str, Any] = _replace_references(entry.resource, {**ids, **targets})
        text = resolved.get("text")
        if isinstance(text, dict) and isinstance(text.get("div"), str):
            div = text["div"]
            for full_url, target in ids.items():
                div = div.replace(f'"{full_url}"', f'"{target}"')
            resolved["text"] = {**text, "div": div}
        return resolved

    # -- one entry -----------------------------------------------------------------------------

    async def _run(self, call: Call, e: Entry, tx: UnitOfWork | None,
                   assigned: str | None = None) -> Result:
        svc = self.service
        req = e.request
        sub = Call(call.principal, call.prefer_return, call.strict,
                   if_match=req.get("ifMatch"), if_none_match=req.get("ifNoneMatch"),
                   if_modified_since=req.get("ifModifiedSince"),
                   if_none_exist=req.get("ifNoneExist"), in_bundle=True,
                   prevalidated=call.prevalidated)
        path, _, query = e.url.partition("?")
        parts = [p for p in path.split("/") if p]
        if e.method in ("GET", "HEAD"):
            params = parse_qsl(query, keep_blank_values=True)
            if len(parts) == 1:
                return await svc.search(sub, (parts[0],), params, parts[0])
            if len(parts) == 2 and parts[1] == "_history":
                return await svc.history(sub, parts[0], None, params)
            if len(parts) == 2:
                return await svc.read(sub, parts[0], parts[1])
            if len(parts) == 3 and parts[2] == "_history":
                return await svc.history(sub, parts[0], parts[1], params)
            if len(parts) == 4 and parts[2] == "_history":
                return await svc.vread(sub, parts[0], parts[1], parts[3])
            raise error(400, "not-supported", f"cannot process GET {e.url} in a bundle",
                        f"Bundle.entry[{e.index}].request.url")
        if e.method == "POST":
            if len(parts) != 1:
                raise error(400, "invalid", f"a POST entry's url must be a resource type, got "
                            f"{e.url!r}", f"Bundle.entry[{e.index}].request.url")
            new_id = assigned.split("/", 1)[1] if assigned else None
            if tx is not None and assigned and sub.if_none_exist:
                existing = await tx.read(*assigned.split("/", 1))
                if existing is not None and not existing.deleted:
                    # the conditional create found it: the same checks and audit as
                    # FhirService.create's If-None-Exist path, never a side door
                    interaction = Interaction("create", parts[0], in_bundle=True)
                    await svc.authorize(sub, interaction)
                    if not svc.hooks.authorizer.visible(sub.principal, existing, "s"):
                        raise error(412, "not-found", f"ifNoneExist of {parts[0]} matched no "
                                    "resource the caller may see; retry the transaction")
                    await svc.audit(sub, interaction, 200, [existing])
                    return svc.respond_write(sub, existing, 200)
            return await svc.create(sub, parts[0], e.resource or {}, tx, new_id)
        if e.method == "PUT":
            if len(parts) == 1 and query:
                return await svc.conditional_update(sub, parts[0], query, e.resource or {}, tx)
            if len(parts) != 2:
                raise error(400, "invalid", f"a PUT entry's url must be Type/id or Type?criteria,"
                            f" got {e.url!r}", f"Bundle.entry[{e.index}].request.url")
            return await svc.update(sub, parts[0], parts[1], e.resource or {}, tx)
        if e.method == "PATCH":
            body = self._patch_body(e)
            if len(parts) == 1 and query:
                return await svc.conditional_patch(sub, parts[0], query, body, tx)
            if len(parts) != 2:
                raise error(400, "invalid", f"a PATCH entry's url must be Type/id, got {e.url!r}",
                            f"Bundle.entry[{e.index}].request.url")
            return await svc.patch(sub, parts[0], parts[1], body, tx)
        # DELETE
        parse_etag(sub.if_match, "ifMatch")
        if len(parts) == 1 and query:
            return await svc.conditional_delete(sub, parts[0], query, tx)
        if len(parts) != 2:
            raise error(400, "invalid", f"a DELETE entry's url must be Type/id or Type?criteria,"
                        f" got {e.url!r}", f"Bundle.entry[{e.index}].request.url")
        try:
            return await svc.delete(sub, parts[0], parts[1], tx)
        except FhirError as exc:
            if exc.status == 404:
                return Result(204, None)
            raise

    def _patch_body(self, e: Entry) -> Any:
        """A PATCH entry carries its JSON Patch as a Binary resource (R4 §3.1.0.11.2)."""
        res = e.resource
        if res and res.get("resourceType") == "Binary" and isinstance(res.get("data"), str):
            import base64
            try:
                return orjson.loads(base64.b64decode(res["data"], validate=True))
            except (ValueError, orjson.JSONDecodeError):
                pass
        raise error(400, "invalid", "a PATCH entry must carry its JSON Patch document as a "
                    "Binary resource with contentType application/json-patch+json and base64 data",
                    f"Bundle.entry[{e.index}].resource")

    def _response(self, result: Result) -> dict[str, Any]:
        response: dict[str, Any] = {"status": _status_line(result.status)}
        v = result.version
        if v is not None:
            response["location"] = f"{v.type}/{v.id}/_history/{v.version}"
            response["etag"] = f'W/"{v.version}"'
            response["lastModified"] = v.last_updated
        out: dict[str, Any] = {}
        if v is not None:
            out["fullUrl"] = f"{self.service.base}/{v.type}/{v.id}"
        body = result.body
        if isinstance(body, bytes):
            out["resource"] = orjson.loads(body)
        elif isinstance(body, dict):
            if body.get("resourceType") == "OperationOutcome":
                response["outcome"] = body
            else:
                out["resource"] = body
        out["response"] = response
        return out


def _collect_references(node: Any, path: str, out: list[tuple[str, str]]) -> None:
    """Every `reference` string in a resource that may need rewriting, with its location."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                if not v.startswith("#"):
                    out.append((v, f"{path}.reference"))
            elif isinstance(v, (dict, list)):
                _collect_references(v, f"{path}.{k}", out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, (dict, list)):
                _collect_references(v, f"{path}[{i}]", out)


def _replace_references(node: Any, targets: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: (targets.get(v, v) if k == "reference" and isinstance(v, str)
                    else _replace_references(v, targets)) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_references(v, targets) for v in node]
    return node


def _with_entry(exc: FhirError, entry: Entry) -> FhirError:
    prefix = f"Bundle.entry[{entry.index}] ({entry.method} {entry.url}): "
    issues = [Issue(i.severity, i.code, prefix + i.diagnostics,
                    i.expression or (f"Bundle.entry[{entry.index}]",)) for i in exc.issues]
    return FhirError(exc.status if exc.status != 204 else 400, issues, exc.headers, exc.audit)


def is_local_reference(ref: str) -> bool:
    return bool(LOCAL_REF.match(ref)) or urlsplit(ref).scheme == ""

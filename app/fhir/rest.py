"""HTTP binding of the FHIR R4 RESTful API (http://hl7.org/fhir/R4/http.html) under `/fhir`.

Routes translate HTTP into `FhirService` calls and `Result`s back into HTTP: content negotiation
(`_format`, `Accept`; JSON only, anything else 406), `Prefer` (`return=`, `handling=`),
conditional headers, `_pretty`, `_summary` and `_elements` on reads. Each request first passes the
authenticator; the service runs authorize → execute → audit.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.definitions.registry import load_registry
from app.fhir.bundles import BundleProcessor
from app.fhir.capability import capability_statement
from app.fhir.interactions import Call, FhirService, Result
from app.fhir.operations.everything import everything_operation
from app.fhir.operations.import_cn import import_cn_operation
from app.fhir.operations.validate import validate_operation
from app.fhir.outcome import FhirError, error, outcome_bytes
from app.fhir.summary import apply_elements, apply_summary
from app.pipeline.hooks import Interaction

FHIR_JSON = "application/fhir+json; charset=utf-8"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "json",
              "text/json")
JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir",
                "text/json"}
BODY_DOC = {"requestBody": {"content": {"application/fhir+json": {"schema": {"type": "object"}}},
                            "required": True}}
PATCH_DOC = {"requestBody": {"content": {"application/json-patch+json": {
    "schema": {"type": "array", "items": {"type": "object"}}}}, "required": True}}
# Documented in the OpenAPI schema only: an unknown type must still get the FHIR 404.
TypeParam = Annotated[str, Path(json_schema_extra={
    "enum": list(load_registry().resource_types), "description": "FHIR R4 resource type"})]
IdParam = Annotated[str, Path(json_schema_extra={
    "pattern": "^[A-Za-z0-9\\-.]{1,64}$", "description": "FHIR resource id"})]
READ_PARAMS = ("_format", "_pretty", "_summary", "_elements")


def negotiate(request: Request) -> bool:
    """Check the requested format (JSON only); returns whether to pretty-print."""
    params = request.query_params
    fmt = params.get("_format")
    if fmt is not None:
        if fmt.split(";")[0].strip() not in JSON_FORMATS:
            raise error(406, "not-supported", f"_format={fmt!r} is not supported; this server "
                        "speaks application/fhir+json (_format=json)", "_format")
    else:
        accept = request.headers.get("accept")
        if accept and not _accepts_json(accept):
            raise error(406, "not-supported", f"cannot answer in {accept!r}; this server speaks "
                        "application/fhir+json and application/json")
    pretty = params.get("_pretty")
    if pretty not in (None, "true", "false"):
        raise error(400, "invalid", f"_pretty must be true or false, got {pretty!r}", "_pretty")
    return pretty == "true"


def _accepts_json(accept: str) -> bool:
    for part in accept.split(","):
        media, _, rest = part.strip().partition(";")
        media = media.strip().lower()
        if "q=0" in rest.replace(" ", "") and "q=0." not in rest.replace(" ", ""):
            continue
        if media in ("*/*", "application/*") or media in JSON_TYPES:
            return True
    return False


def check_content_type(request: Request, patch: bool = False) -> None:
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    allowed = ("application/json-patch+json", "application/json") if patch else \
        ("application/fhir+json", "application/json", "application/json+fhir")
    if ctype and ctype not in allowed:
        raise error(415, "not-supported", f"Content-Type {ctype!r} is not supported here; send "
                    f"{allowed[0]}")


async def make_call(request: Request, service: FhirService) -> Call:
    """Authenticate the caller and collect the headers that shape the interaction."""
    principal = await service.hooks.authenticator.authenticate(request)
    headers = request.headers
    prefer = {}
    for part in headers.get("prefer", "").split(","):
        k, _, v = part.strip().partition("=")
        if k:
            prefer[k.strip().lower()] = v.strip().strip('"')
    ret = prefer.get("return", "representation")
    if ret not in ("minimal", "representation", "OperationOutcome"):
        ret = "representation"
    return Call(
        principal=principal,
        prefer_return=ret,
        strict=prefer.get("handling") == "strict",
        if_match=headers.get("if-match"),
        if_none_match=headers.get("if-none-match"),
        if_modified_since=headers.get("if-modified-since"),
        if_none_exist=headers.get("if-none-exist"),
    )


def render(result: Result, pretty: bool, request: Request | None = None,
           registry: Any = None) -> Response:
    body = result.body
    summary = elements = None
    if request is not None:
        summary = request.query_params.get("_summary")
        elements = request.query_params.get("_elements")
    if isinstance(body, bytes) and (pretty or (summary and summary != "false") or elements):
        body = orjson.loads(body)
    if isinstance(body, dict) and registry is not None and body.get("resourceType") not in (
            "Bundle", "OperationOutcome"):
        if summary in ("true", "text", "data"):
            body = apply_summary(body, summary, registry)
        elif elements:
            body, _ = apply_elements(body, [e.strip() for e in elements.split(",") if e.strip()],
                                     registry)
    if isinstance(body, dict):
        content = orjson.dumps(body, option=orjson.OPT_INDENT_2 if pretty else 0)
    else:
        content = body or b""
    headers = dict(result.headers)
    if result.status in (204, 304):
        return Response(status_code=result.status, headers=headers)
    return Response(content, status_code=result.status, headers=headers, media_type=FHIR_JSON)


async def read_interaction(service: FhirService, request: Request, type_: str,
                           id_: str) -> Response:
    """GET [base]/[type]/[id]: shared by the routed endpoint and `FastRead`."""
    pretty = negotiate(request)
    call = await make_call(request, service)
    result = await service.read(call, type_, id_)
    return render(result, pretty, request, service.registry)


class FastRead:
    """Answers `GET /fhir/{type}/{id}`, the hottest interaction, without walking every route.

    FastAPI's router tries each route and solves dependencies per request, which costs more
    than the read itself. This dispatches exactly that shape to `read_interaction` (the same
    authenticate → authorize → read → audit path as the routed endpoint) and hands everything
    else to the application.
    """

    PATH = re.compile(r"^/fhir/([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})$")

    def __init__(self, app: ASGIApp, service: FhirService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            m = self.PATH.match(scope["path"])
            if m is not None:
                request = Request(scope, receive)
                try:
                    response = await read_interaction(self.service, request, m.group(1),
                                                      m.group(2))
                except FhirError as exc:
                    await self.service.audit_refusals(exc)
                    response = Response(outcome_bytes(exc.issues), status_code=exc.status,
                                        headers=exc.headers, media_type=FHIR_JSON)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_router(service: FhirService) -> APIRouter:
    router = APIRouter(prefix="/fhir")
    bundles = BundleProcessor(service)
    registry = service.registry

    def query_list(request: Request) -> list[tuple[str, str]]:
        return list(request.query_params.multi_items())

    async def form_or_query(request: Request) -> list[tuple[str, str]]:
        params = query_list(request)
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip()
        if ctype == "application/x-www-form-urlencoded":
            raw = await request.body()
            try:
                params += parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError:
                raise error(400, "structure", "the form body is not UTF-8") from None
        elif ctype:
            raise error(415, "not-supported", "POST _search takes an "
                        "application/x-www-form-urlencoded body")
        return params

    @router.get("/metadata", tags=["system"])
    async def metadata(request: Request) -> Response:
        pretty = negotiate(request)
        mode = request.query_params.get("mode", "full")
        if mode not in ("full", "normative", "terminology"):
            raise error(400, "value", f"mode must be full, normative or terminology, got {mode!r}")
        cs = capability_statement(registry, service.base, request.app.state.started)
        return render(Result(200, cs), pretty)

    @router.get("/_history", tags=["system"])
    async def history_system(request: Request) -> Response:
        pretty = negotiate(request)
        call = await make_call(request, service)
        return render(await service.history(call, None, None,
                                            query_list(request)), pretty)

    @router.get("", tags=["system"])
    async def search_system(request: Request) -> Response:
        pretty = negotiate(request)
        return render(await _system_search(request, query_list(request)), pretty)

    @router.post("/_search", tags=["system"])
    async def search_system_post(request: Request) -> Response:
        pretty = negotiate(request)
        return render(await _system_search(request, await form_or_query(request)), pretty)

    async def _system_search(request: Request, params: list[tuple[str, str]]) -> Result:
        types: list[str] = []
        for k, v in params:
            if k == "_type":
                types += [t.strip() for t in v.split(",") if t.strip()]
        call = await make_call(request, service)
        if not types:
            # authorization first: a caller without a token learns nothing, not even this
            await service.authorize(call, Interaction("search-system"))
            raise error(400, "required", "a system-level search needs _type (e.g. "
                        "_type=Patient,Practitioner); searching every type at once is not "
                        "supported", "_type")
        return await service.search(call, tuple(dict.fromkeys(types)), params, "")

    @router.post("", tags=["system"], openapi_extra=BODY_DOC)
    async def transaction(request: Request) -> Response:
        pretty = negotiate(request)
        check_content_type(request)
        call = await make_call(request, service)
        return render(await bundles.process(call, await request.body()), pretty)

    @router.get("/{type_}", tags=["type"])
    async def search_type(type_: TypeParam, request: Request) -> Response:
        pretty = negotiate(request)
        call = await make_call(request, service)
        return render(await service.search(call, (type_,), query_list(request),
                                           type_), pretty)

    @router.post("/{type_}", tags=["type"], openapi_extra=BODY_DOC)
    async def create(type_: TypeParam, request: Request) -> Response:
        if type_ == "$import-cn":
            pretty = negotiate(request)
            check_content_type(request)
            call = await make_call(request, service)
            return render(await import_cn_operation(service, call, await request.body()),
                          pretty)
        pretty = negotiate(request)
        check_content_type(request)
        call = await make_call(request, service)
        return render(await service.create(call, type_, await request.body()),
                      pretty)

    @router.put("/{type_}", tags=["type"], openapi_extra=BODY_DOC)
    async def conditional_update(type_: TypeParam, request: Request) -> Response:
        pretty = negotiate(request)
        check_content_type(request)
        query = _criteria(request)
        call = await make_call(request, service)
        return render(await service.conditional_update(call, type_, query,
                                                       await request.body()), pretty)

    @router.patch("/{type_}", tags=["type"], openapi_extra=PATCH_DOC)
    async def conditional_patch(type_: TypeParam, request: Request) -> Response:
        pretty = negotiate(request)
        check_content_type(request, patch=True)
        query = _criteria(request)
        call = await make_call(request, service)
        return render(await service.conditional_patch(call, type_, query,
                                                      await request.body()), pretty)

    @router.delete("/{type_}", tags=["type"])
    async def conditional_delete(type_: TypeParam, request: Request) -> Response:
        pretty = negotiate(request)
        call = await make_call(request, service)
        return render(await service.conditional_delete(call, type_,
                                                       _criteria(request)), pretty)

    @router.get("/{type_}/_history", tags=["type"])
    async def history_type(type_: TypeParam, request: Request) -> Response:
        pretty = negotiate(request)
        call = await make_call(request, service)
        return render(await service.history(call, type_, None,
                                            query_list(request)), pretty)

    @router.get("/{type_}/{id_}", tags=["instance"])
    async def read(type_: TypeParam, id_: IdParam, request: Request) -> Response:
        if id_.startswith("$"):
            return await _operation(request, type_, None, id_, None)
        return await read_interaction(service, request, type_, id_)

    @router.post("/{type_}/{name}", tags=["type"], openapi_extra=BODY_DOC)
    async def search_or_operation(type_: TypeParam, name: str, request: Request) -> Response:
        if name == "_search":
            pretty = negotiate(request)
            params = await form_or_query(request)
            call = await make_call(request, service)
            return render(await service.search(call, (type_,), params, type_),
                          pretty)
        if name.startswith("$"):
            return await _operation(request, type_, None, name, await request.body())
        raise error(405, "not-supported", f"POST is not allowed on {type_}/{name}; use PUT to "
                    "update a resource")

    @router.put("/{type_}/{id_}", tags=["instance"], openapi_extra=BODY_DOC)
    async def update(type_: TypeParam, id_: IdParam, request: Request) -> Response:
        pretty = negotiate(request)
        check_content_type(request)
        call = await make_call(request, service)
        return render(await service.update(call, type_, id_, await request.body()),
                      pretty)

    @router.patch("/{type_}/{id_}", tags=["instance"], openapi_extra=PATCH_DOC)
    async def patch(type_: TypeParam, id_: IdParam, request: Request) -> Response:
        pretty = negotiate(request)
        check_content_type(request, patch=True)
        call = await make_call(request, service)
        return render(await service.patch(call, type_, id_, await request.body()),
                      pretty)

    @router.delete("/{type_}/{id_}", tags=["instance"])
    async def delete(type_: TypeParam, id_: IdParam, request: Request) -> Response:
        pretty = negotiate(request)
        call = await make_call(request, service)
        return render(await service.delete(call, type_, id_), pretty)

    @router.get("/{type_}/{id_}/_history", tags=["instance"])
    async def history_instance(type_: TypeParam, id_: IdParam, request: Request) -> Response:
        pretty = negotiate(request)
        call = await make_call(request, service)
        return render(await service.history(call, type_, id_,
                                            query_list(request)), pretty)

    @router.get("/{type_}/{id_}/_history/{vid}", tags=["instance"])
    async def vread(type_: TypeParam, id_: IdParam, vid: str, request: Request) -> Response:
        pretty = negotiate(request)
        call = await make_call(request, service)
        return render(await service.vread(call, type_, id_, vid), pretty, request,
                      registry)

    @router.get("/{type_}/{id_}/{op}", tags=["instance"])
    async def instance_operation_get(type_: TypeParam, id_: IdParam, op: str,
                                     request: Request) -> Response:
        return await _operation(request, type_, id_, op, None)

    @router.post("/{type_}/{id_}/{op}", tags=["instance"], openapi_extra=BODY_DOC)
    async def instance_operation_post(type_: TypeParam, id_: IdParam, op: str,
                                      request: Request) -> Response:
        return await _operation(request, type_, id_, op, await request.body())

    @router.get("/{type_}/{id_}/_history/{vid}/{op}", tags=["instance"])
    async def version_operation(type_: TypeParam, id_: IdParam, vid: str, op: str,
                                request: Request) -> Response:
        """`$verify` of one resource version against its anchor on chain."""
        pretty = negotiate(request)
        call = await make_call(request, service)
        if op != "$verify" or service.audit_events is None:
            service.check_type(type_)
            raise error(404, "not-supported", f"operation {op!r} is not supported on a "
                        "resource version; $verify is")
        return render(await service.audit_events.verify_version(call, type_, id_, vid), pretty)

    async def _operation(request: Request, type_: str, id_: str | None, op: str,
                         body: bytes | None) -> Response:
        pretty = negotiate(request)
        call = await make_call(request, service)
        params = query_list(request)
        if op == "$validate":
            if body:
                check_content_type(request)
            result = await validate_operation(service, call, type_, id_, body, params)
        elif op == "$everything" and type_ == "Patient" and id_ is not None:
            result = await everything_operation(service, call, id_, params)
        elif op == "$verify" and type_ == "AuditEvent" and id_ is not None \
                and service.audit_events is not None:
            result = await service.audit_events.verify_event(call, id_)
        else:
            service.check_type(type_)
            where = f"{type_}/{id_}" if id_ else type_
            raise error(404, "not-supported", f"operation {op!r} is not supported on {where}; "
                        "see the CapabilityStatement at /fhir/metadata")
        return render(result, pretty)

    return router


def _criteria(request: Request) -> str:
    query = str(request.url.query)
    if not query:
        raise error(400, "required", "a conditional interaction on a type needs search criteria "
                    "in the URL, e.g. ?identifier=system|value")
    return query

"""`Patient/[id]/$everything` (http://hl7.org/fhir/R4/patient-operation-everything.html).

Returns the Patient and every current resource in its Patient compartment (as the R4
CompartmentDefinition defines it), filtered by `_type` and `_since`, paged by `_count`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson

from app.fhir.interactions import Call, FhirService, Result
from app.fhir.outcome import error
from app.pipeline.hooks import Interaction
from app.search.dates import instant_to_ms
from app.storage.base import StoredVersion
from app.text import is_digits


async def everything_operation(svc: FhirService, call: Call, patient_id: str,
                               query: list[tuple[str, str]]) -> Result:
    svc.check_id(patient_id)
    interaction = Interaction("operation", "Patient", patient_id, "$everything", call.in_bundle)
    await svc.authorize(call, interaction)
    types: list[str] = []
    since = None
    count = svc.settings.default_page_size
    offset = 0
    for k, value in query:
        if k == "_type":
            for t in value.split(","):
                svc.check_type(t.strip())
                types.append(t.strip())
        elif k == "_since":
            try:
                instant_to_ms(value)
            except ValueError as exc:
                raise error(400, "invalid", f"_since: {exc}", "_since") from None
            since = value
        elif k in ("_count", "_offset"):
            if not is_digits(value) or len(value) > 12:
                raise error(400, "invalid", f"{k} must be a whole number, got {value!r}", k)
            if k == "_count":
                count = min(int(value), svc.settings.max_page_size)
            else:
                offset = int(value)
        elif k in ("start", "end"):
            raise error(400, "not-supported", f"{k} (care date range) is not supported; "
                        "use _since", k)
        elif call.strict and k not in ("_format", "_pretty"):
            raise error(400, "not-supported", f"$everything does not take {k!r}", k)
    patient = await svc.store.read("Patient", patient_id)
    if patient is None or patient.deleted or not svc.hooks.authorizer.visible(call.principal,
                                                                               patient):
        raise error(404, "not-found", f"Patient/{patient_id} is not known")
    authz = svc.hooks.authorizer
    loaded: dict[tuple[str, str], StoredVersion] = {}
    if authz.restricted(call.principal):
        # A type the client names must be one the token may search (403, from the token
        # alone); otherwise only the types it may search, and (granular scopes) only matching
        # resources; the total counts what is left.
        for t in dict.fromkeys(types):
            await svc.authorize(call, Interaction("search-type", t, in_bundle=call.in_bundle))
        wanted = types or ["Patient", *(t for t, params in svc.registry.compartment_patient.items()
                                        if params and t != "Patient")]
        allowed, check_each = authz.searchable_types(call.principal, wanted)
        keys = [("Patient", patient_id)] if "Patient" in allowed else []
        if any(t != "Patient" for t in allowed):
            keys += [k for k in await svc.store.everything(patient_id, allowed, since)
                     if k != ("Patient", patient_id)]
        if check_each:
            kept = []
            for key in keys:
                v = await svc.store.read(*key)
                if v is not None and not v.deleted and authz.visible(call.principal, v, "s"):
                    kept.append(key)
                    loaded[key] = v
            keys = kept
    else:
        keys = [("Patient", patient_id)] if not types or "Patient" in types else []
        keys += [k for k in await svc.store.everything(patient_id, types or None, since)
                 if k != ("Patient", patient_id)]
    total = len(keys)
    page_keys = keys[offset: offset + count]
    versions = []
    for t, i in page_keys:
        v = loaded.get((t, i)) or await svc.store.read(t, i)
        if v is not None and not v.deleted:
            versions.append(v)
    versions = svc.visible(call, versions, "s")
    path = f"Patient/{patient_id}/$everything"
    keep = [(k, value) for k, value in query if k in ("_type", "_since")]

    def link(rel: str, off: int) -> dict[str, str]:
        params = [*keep, ("_count", str(count)), ("_offset", str(off))]
        return {"relation": rel, "url": f"{svc.base}/{path}?{urlencode(params)}"}

    links = [link("self", offset)]
    if offset + count < total:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    bundle: dict[str, Any] = {
        "resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
        "entry": [{"fullUrl": f"{svc.base}/{v.type}/{v.id}", "resource": orjson.loads(v.body),
                   "search": {"mode": "match"}} for v in versions],
    }
    if not bundle["entry"]:
        del bundle["entry"]
    await svc.audit(call, interaction, 200, versions)
    return Result(200, bundle)

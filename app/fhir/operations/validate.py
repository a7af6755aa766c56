"""`$validate` (http://hl7.org/fhir/R4/resource-operation-validate.html), type and instance level.

Answers 200 with an OperationOutcome whether or not the resource is valid; 4xx only when the
validation itself cannot be done (no resource, unknown mode or profile).

Besides the base R4 definition, the resource is validated against the CN profile named by the
`profile` parameter and against the CN profiles it declares in `meta.profile` (see
`app.fhir.profile_validation`).
"""

from __future__ import annotations

from typing import Any

import orjson

from app.fhir.interactions import Call, FhirService, Result
from app.fhir.outcome import Issue, error, outcome
from app.fhir.validation import validate_resource
from app.pipeline.hooks import Interaction

MODES = ("create", "update", "delete")

def _declared_profiles(resource: dict[str, Any] | None) -> list[str]:
    meta = resource.get("meta") if resource is not None else None
    declared = meta.get("profile") if isinstance(meta, dict) else None
    return [p for p in declared if isinstance(p, str)] if isinstance(declared, list) else []


async def validate_operation(svc: FhirService, call: Call, type_: str, id_: str | None,
                             body: bytes | None, query: list[tuple[str, str]]) -> Result:
    svc.check_type(type_)
    mode: str | None = next((v for k, v in query if k == "mode"), None)
    # Validating a resource sent in the body needs the permission to write it (c, or u for
    # mode=update); validating a stored instance needs read.
    perms = ("u" if mode == "update" else "c") if body else "r"
    interaction = Interaction("operation", type_, id_, "$validate", call.in_bundle,
                              permissions=perms)
    await svc.authorize(call, interaction)
    profile: str | None = next((v for k, v in query if k == "profile"), None)
    resource: dict[str, Any] | None = None
    if body:
        parsed = svc.parse_body(body, None)
        if parsed.get("resourceType") == "Parameters":
            for p in parsed.get("parameter", []) if isinstance(parsed.get("parameter"), list) \
                    else []:
                if not isinstance(p, dict):
                    continue
                if p.get("name") == "resource" and isinstance(p.get("resource"), dict):
                    resource = p["resource"]
                elif p.get("name") == "mode":
                    mode = p.get("valueCode") or p.get("valueString")
                elif p.get("name") == "profile":
                    profile = p.get("valueUri") or p.get("valueCanonical")
        else:
            resource = parsed
    if mode is not None and mode not in MODES:
        raise error(400, "value", f"mode must be one of {', '.join(MODES)}, got {mode!r}", "mode")
    validator = svc.profile_validator
    known = validator.profiles_for(type_)
    profiles: list[str] = []
    if profile is not None and profile != f"http://hl7.org/fhir/StructureDefinition/{type_}":
        if profile.split("|", 1)[0] not in known:
            listed = ", ".join(known) if known else "none"
            raise error(400, "not-supported", f"profile {profile!r} is not known to this server; "
                        f"it validates against the base R4 {type_} definition and the CN "
                        f"profiles for {type_} (known: {listed})", "profile")
        profiles.append(profile)
    entities = []
    if resource is None and id_ is not None:
        stored = await svc.store.read(type_, id_)
        if stored is None or stored.deleted or await svc.hidden(call, stored):
            raise error(404, "not-found", f"{type_}/{id_} is not known")
        entities.append(stored)
        resource = None if mode == "delete" else orjson.loads(stored.body)
    if resource is None and mode != "delete":
        raise error(400, "required", "send the resource to validate as the body (or in a "
                    "Parameters resource as parameter 'resource')")
    issues: list[Issue] = []
    if resource is not None:
        if resource.get("resourceType") != type_:
            issues.append(Issue("error", "invalid", f"the resource is a "
                                f"{resource.get('resourceType')!r}, not a {type_}",
                                ("resourceType",)))
        else:
            found = validate_resource(resource, svc.registry)
            issues += [Issue(i.severity, i.code, i.diagnostics, tuple(i.expression))
                       for i in found]
            for declared in _declared_profiles(resource):
                if declared.split("|", 1)[0] in known and declared not in profiles:
                    profiles.append(declared)
            for url in profiles:
                issues += validator.validate(resource, url)
        if mode == "create" and "id" in resource and id_ is None:
            issues.append(Issue("warning", "informational", "an id given on create is ignored",
                                (f"{type_}.id",)))
        if mode == "update" and resource.get("id") in (None, ""):
            issues.append(Issue("error", "required", "an update needs the resource's id",
                                (f"{type_}.id",)))
        if mode == "update" and id_ is not None and resource.get("id") != id_:
            issues.append(Issue("error", "invalid", f"the resource's id does not match {id_!r}",
                                (f"{type_}.id",)))
    if not any(i.severity in ("error", "fatal") for i in issues):
        against = "".join(f" and {url}" for url in profiles) if resource is not None else ""
        issues.insert(0, Issue("information", "informational",
                               f"the {type_} is valid against the base FHIR R4 definition"
                               f"{against}"))
    await svc.audit(call, interaction, 200, entities)
    return Result(200, outcome(issues))

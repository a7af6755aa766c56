"""`_summary` and `_elements` (FHIR R4 search §3.1.1.5.8-9, http://hl7.org/fhir/R4/search.html#summary).

Pure functions over parsed resources. What counts as a summary or mandatory element comes from
the R4 element tables in the registry (`ElementInfo.summary`, `.min`, `.modifier`), never from
lists in code.

Choices made where the specification leaves room:
- `_summary=true` keeps the elements marked isSummary, recursively: inside a kept element of a
  complex type only that type's summary elements are kept (so `Patient.name[0].extension`
  goes), and a nested resource (`Bundle.entry.resource`) is summarised as its own type.
  Elements left empty by this filtering are dropped, as FHIR JSON has no empty objects.
- `_summary=text` keeps `text`, `id`, `meta` and the top-level mandatory elements, whole.
- `_summary=data` keeps everything but `text`.
- `_elements` keeps the named top-level elements plus `id`, `meta`, and every top-level element
  that is mandatory (the spec says servers SHOULD) or a modifier (not required by R4, but a
  client must not miss e.g. `verificationStatus = entered-in-error` because it asked only for
  `code`). Names may be given as `value` (every `value[x]` variant), `valueQuantity`, or
  `Patient.name`; names that mean nothing for the resource's type are returned so the caller
  can reject them when the client asked for strict handling.
- Every filtered result carries the SUBSETTED tag in `meta.tag`, as R4 requires, so nobody
  mistakes it for the whole resource.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.definitions.registry import ElementInfo, Registry

__all__ = ["SUBSETTED", "SUMMARY_MODES", "apply_elements", "apply_summary", "is_subsetted"]

SUBSETTED: dict[str, str] = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}

SUMMARY_MODES = ("true", "text", "data", "false")
"""`_summary` values that filter a resource; `count` is answered by search without resources."""

_ALWAYS = ("resourceType", "id", "meta")


@dataclass(frozen=True, slots=True)
class _Key:
    """What one JSON property of an object is, in R4 terms."""

    element: str  # element name without [x]: "value", "birthDate"
    info: ElementInfo
    type_code: str  # type of this property's value: "Quantity", "string", "BackboneElement"
    child: tuple[str, str] | None  # (owner type, prefix) describing the value's own properties
    resource: bool  # the value is a whole resource
    choice: bool  # one type of a choice element: valueQuantity of value[x]


class _Keys:
    """JSON property lookups derived from the registry, cached per (owner type, prefix)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._cache: dict[tuple[str, str], dict[str, _Key]] = {}

    def of(self, owner: str, prefix: str) -> dict[str, _Key]:
        found = self._cache.get((owner, prefix))
        if found is None:
            found = self._build(owner, prefix)
            self._cache[(owner, prefix)] = found
        return found

    def _build(self, owner: str, prefix: str) -> dict[str, _Key]:
        resources = set(self.registry.resource_types) | {"Resource"}
        out: dict[str, _Key] = {}
        for path, info in self.registry.elements(owner).items():
            if not path.startswith(prefix) or "." in path[len(prefix):]:
                continue
            name = path[len(prefix):]
            if info.content_reference:
                out[name] = _Key(name, info, "BackboneElement",
                                 (owner, info.content_reference + "."), False, False)
                continue
            choice = name.endswith("[x]")
            for code in info.types:
                key = name[:-3] + code[0].upper() + code[1:] if choice else name
                if code in ("BackboneElement", "Element"):
                    child: tuple[str, str] | None = (owner, path + ".")
                elif code[0].islower() or code in resources:
                    child = None
                else:
                    child = (code, "")
                out[key] = _Key(name.removesuffix("[x]"), info, code, child, code in resources,
                                choice)
        return out


_keys_by_registry: dict[int, tuple[Registry, _Keys]] = {}


def _keys_for(registry: Registry) -> _Keys:
    entry = _keys_by_registry.get(id(registry))
    if entry is None or entry[0] is not registry:
        entry = (registry, _Keys(registry))
        _keys_by_registry[id(registry)] = entry
    return entry[1]


def _lookup(keys: dict[str, _Key], prop: str) -> tuple[_Key | None, bool]:
    """The element a JSON property belongs to, and whether it is the `_prop` extension half."""
    key = keys.get(prop)
    if key is not None:
        return key, False
    if prop.startswith("_"):
        key = keys.get(prop[1:])
        if key is not None and key.type_code[0].islower():
            return key, True
    return None, False


def is_subsetted(resource: dict[str, Any]) -> bool:
    """Whether a resource carries the SUBSETTED tag (so it must not be used as a whole)."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return isinstance(tags, list) and any(
        isinstance(t, dict) and t.get("system") == SUBSETTED["system"]
        and t.get("code") == SUBSETTED["code"] for t in tags)


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    if is_subsetted(resource):
        return resource
    meta = resource.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    tags = meta.get("tag")
    meta["tag"] = [*(tags if isinstance(tags, list) else []), dict(SUBSETTED)]
    # A new meta goes where readers expect it (after id, else after resourceType), not last.
    after = "id" if "id" in resource else "resourceType"
    out: dict[str, Any] = {}
    for prop, value in resource.items():
        out[prop] = value
        if prop == after and "meta" not in resource:
            out["meta"] = meta
    out["meta"] = meta
    return out


def apply_summary(resource: dict[str, Any], mode: str, registry: Registry) -> dict[str, Any]:
    """The resource as `_summary=mode` returns it. `false` returns the resource itself.

    Raises ValueError for a mode that does not filter resources (`count`, anything unknown);
    the caller answers those before any resource is read.
    """
    if mode == "false":
        return resource
    if mode == "data":
        return _tagged({k: v for k, v in resource.items() if k not in ("text", "_text")})
    rtype = resource.get("resourceType")
    keys = _keys_for(registry).of(rtype, "") if isinstance(rtype, str) else {}
    if mode == "text":
        out: dict[str, Any] = {}
        for prop, value in resource.items():
            key, _ = _lookup(keys, prop)
            if prop in _ALWAYS or prop == "text" or (key is not None and key.info.min >= 1):
                out[prop] = value
        return _tagged(out)
    if mode == "true":
        out = _summary_object(resource, keys, _keys_for(registry), resource_root=True)
        return _tagged(out)
    raise ValueError(f"_summary={mode!r} does not select resource content; expected one of "
                     f"{', '.join(SUMMARY_MODES)}")


def _summary_object(obj: dict[str, Any], keys: dict[str, _Key], all_keys: _Keys, *,
                    resource_root: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prop, value in obj.items():
        if resource_root and prop in _ALWAYS:
            out[prop] = value
            continue
        key, extension = _lookup(keys, prop)
        if key is None or not key.info.summary:
            continue
        if extension:
            kept = _summary_value(value, all_keys.of("Element", ""), all_keys, resource=False)
        elif key.resource:
            kept = _summary_value(value, None, all_keys, resource=True)
        elif key.child is None:
            kept = value
        else:
            kept = _summary_value(value, all_keys.of(*key.child), all_keys, resource=False)
        if kept is not None:
            out[prop] = kept
    _drop_orphan_nulls(out)
    return out


def _summary_value(value: Any, keys: dict[str, _Key] | None, all_keys: _Keys, *,
                   resource: bool) -> Any:
    """Filter one value (or array of values); None when nothing is left."""
    if isinstance(value, list):
        items = [None if item is None else _summary_value(item, keys, all_keys,
                                                          resource=resource)
                 for item in value]
        return items if any(item is not None for item in items) else None
    if not isinstance(value, dict):
        return None
    if resource:
        rtype = value.get("resourceType")
        if not isinstance(rtype, str):
            return None
        nested = _summary_object(value, all_keys.of(rtype, ""), all_keys, resource_root=True)
        return nested
    assert keys is not None
    filtered = _summary_object(value, keys, all_keys)
    return filtered or None


def _drop_orphan_nulls(obj: dict[str, Any]) -> None:
    """Keep `x` / `_x` array pairs valid after one side lost entries to filtering.

    A null in `given` is only allowed where `_given` has something at that position; once
    `_given` is gone (its extensions are not summary elements), those nulls must go too.
    """
    for prop in [p for p in obj if not p.startswith("_")]:
        values = obj[prop]
        if not isinstance(values, list) or None not in values:
            continue
        partner = obj.get("_" + prop)
        if isinstance(partner, list) and len(partner) == len(values):
            pairs = [(v, e) for v, e in zip(values, partner, strict=True)
                     if v is not None or e is not None]
            if pairs:
                obj[prop] = [v for v, _ in pairs]
                obj["_" + prop] = [e for _, e in pairs]
                if all(v is None for v in obj[prop]):
                    del obj[prop]
                if all(e is None for e in obj["_" + prop]):
                    del obj["_" + prop]
            else:
                del obj[prop], obj["_" + prop]
            continue
        kept = [v for v in values if v is not None]
        if kept:
            obj[prop] = kept
        else:
            del obj[prop]


def apply_elements(resource: dict[str, Any], names: Iterable[str],
                   registry: Registry) -> tuple[dict[str, Any], list[str]]:
    """The resource as `_elements=names` returns it, and the names unknown for its type.

    Names are top-level element names (`identifier`, `value`, `valueQuantity`), optionally
    prefixed with a resource type (`Patient.name`); a prefix naming another resource type makes
    the name apply to that type only, so it is neither used nor unknown here.
    """
    rtype = resource.get("resourceType")
    rtype = rtype if isinstance(rtype, str) else ""
    keys = _keys_for(registry).of(rtype, "") if rtype else {}
    wanted: set[str] = set()
    unknown: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if "." in name:
            scope, _, rest = name.partition(".")
            if scope != rtype:
                if scope not in registry.resource_types:
                    unknown.append(raw)
                continue
            name = rest
        if name in _ALWAYS:
            continue
        matched = {k for k, key in keys.items()
                   if k == name or (key.choice and key.element == name)}
        if not matched:
            unknown.append(raw)
        wanted |= matched
    out: dict[str, Any] = {}
    for prop, value in resource.items():
        key, _ = _lookup(keys, prop)
        base = prop[1:] if prop.startswith("_") else prop
        if (prop in _ALWAYS or base in wanted
                or (key is not None and (key.info.min >= 1 or key.info.modifier))):
            out[prop] = value
    return _tagged(out), unknown


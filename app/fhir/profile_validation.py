"""Validation against the CN profiles of `fhir_profiles/` (FHIR R4 §2.11 profiling, profiling.html).

A profile is a StructureDefinition with `derivation: constraint` whose differential narrows the
base R4 definition. The base definition itself is checked by `app.fhir.validation`; this module
checks only what the differential adds, element by element:

- cardinality (`min`/`max`), counted per occurrence of the parent element (§2.11.0.4);
- slicing (§2.11.0.7) with discriminators of type `value` and `pattern` (path `url`, `system`,
  `$this`, or a dotted child path) and `type` on choice elements; slice cardinality, the
  slice's own rules applied to its members only, `rules: closed`;
- `fixed[x]` (exact JSON equality) and `pattern[x]` (the instance contains the pattern);
- required bindings, with ValueSets expanded from the CodeSystems and ValueSets of
  `fhir_profiles/` (falling back to the registry's R4 expansions; unexpandable: not checked);
- `constraint` invariants, evaluated with fhirpathpy on every occurrence of the element;
- the allowed types of choice elements (`value[x]` of an extension definition);
- extension slices typed with an extension StructureDefinition of `fhir_profiles/`: the
  extension is validated against that definition's differential.

`baseDefinition` chains are followed through CN profiles; R4 core is left to the base validator.
Issues name the profile, the element id, the rule and what was expected. Instance values are not
echoed (they may be a 身份证号), except codes in binding issues. `validate` never raises.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fhirpathpy

from app.definitions.registry import Registry
from app.fhir.outcome import Issue
from app.text import is_digits

__all__ = ["ProfileValidator"]

log = logging.getLogger(__name__)

CORE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"

MAX_ISSUES = 100
"""Validation stops after this many issues, like the base validator."""

MAX_PROFILE_DEPTH = 8
"""Extension profiles inside extension profiles, and base-definition chains, stop here."""

Codes = dict[str, frozenset[str]]
"""An expanded ValueSet: code system URL -> codes."""


@dataclass
class _Node:
    """One element of a differential, with the elements beneath it (`name` or `name:slice`)."""

    element: dict[str, Any]
    children: dict[str, _Node] = field(default_factory=dict)


@dataclass
class _Item:
    """One occurrence of an element in the instance: its value, location and type (choices)."""

    value: Any
    location: str
    type_: str | None = None


class _Full(Exception):
    """Raised inside a run once MAX_ISSUES issues have been collected."""


def _segments(element_id: str) -> list[str]:
    # Element ids are dot-separated; a slice name follows ':' and may itself not contain '.'
    # in fhir_profiles/, so a plain split is enough.
    return element_id.split(".")


def _tree(sd: dict[str, Any]) -> _Node | None:
    elements = sd.get("differential", {}).get("element", [])
    if not isinstance(elements, list) or not elements:
        return None
    root: _Node | None = None
    for el in elements:
        if not isinstance(el, dict) or not isinstance(el.get("id") or el.get("path"), str):
            continue
        segs = _segments(el.get("id") or el["path"])
        if len(segs) == 1:
            root = root or _Node(el)
            root.element = el
            continue
        if root is None:
            root = _Node({"id": segs[0], "path": segs[0]})
        node = root
        for seg in segs[1:-1]:
            node = node.children.setdefault(seg, _Node({}))
        existing = node.children.get(segs[-1])
        if existing is None:
            node.children[segs[-1]] = _Node(el)
        else:
            existing.element = el
    return root


def _prefixed(element: dict[str, Any], prefix: str) -> tuple[str, Any] | None:
    for key, value in element.items():
        if key.startswith(prefix) and len(key) > len(prefix) and key[len(prefix)].isupper():
            return key, value
    return None


def _contains(instance: Any, pattern: Any) -> bool:
    """FHIR pattern matching: every pattern key present with a matching value (§2.11.0.5)."""
    if isinstance(pattern, dict):
        return isinstance(instance, dict) and all(
            k in instance and _contains(instance[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(instance, list) and all(
            any(_contains(i, p) for i in instance) for p in pattern)
    return type(instance) is type(pattern) and instance == pattern


def _walk(value: Any, path: str) -> list[Any]:
    """The values at a dotted child path of `value` (`$this` is the value itself)."""
    current = [value]
    for part in path.split("."):
        if part == "$this":
            continue
        nxt: list[Any] = []
        for v in current:
            child = v.get(part) if isinstance(v, dict) else None
            if isinstance(child, list):
                nxt.extend(child)
            elif child is not None:
                nxt.append(child)
        current = nxt
    return current


def _type_suffix(code: str) -> str:
    return code[:1].upper() + code[1:]


class ProfileValidator:
    """Validates resources against the CN profiles among `resources` (fhir_profiles/)."""

    def __init__(self, resources: list[dict[str, Any]], registry: Registry) -> None:
        self.registry = registry
        self.structures: dict[str, dict[str, Any]] = {}
        self.code_systems: dict[str, dict[str, Any]] = {}
        self.value_sets: dict[str, dict[str, Any]] = {}
        for r in resources:
            if not isinstance(r, dict) or not isinstance(r.get("url"), str):
                continue
            kind = r.get("resourceType")
            if kind == "StructureDefinition":
                self.structures[r["url"]] = r
            elif kind == "CodeSystem":
                self.code_systems[r["url"]] = r
            elif kind == "ValueSet":
                self.value_sets[r["url"]] = r
        self._trees: dict[str, _Node | None] = {}
        self._expansions: dict[str, Codes | None] = {}
        self._compiled: dict[str, Callable[[Any], list[Any]]] = {}

    def compiled(self, expression: str) -> Callable[[Any], list[Any]]:
        """An invariant's FHIRPath, parsed once (parsing costs far more than evaluating)."""
        fn = self._compiled.get(expression)
        if fn is None:
            evaluate = fhirpathpy.compile(expression)
            fn = self._compiled[expression] = lambda value: evaluate(value, {})
        return fn

    def declared_issues(self, resource: dict[str, Any]) -> list[Issue]:
        """Issues against every CN profile the resource declares in meta.profile (profiles
        this server does not know are the client's business and are not checked)."""
        meta = resource.get("meta")
        declared = meta.get("profile") if isinstance(meta, dict) else None
        if not isinstance(declared, list):
            return []
        issues: list[Issue] = []
        for url in declared:
            if isinstance(url, str) and self.knows(url):
                issues += self.validate(resource, url)
        return issues

    def profiles_for(self, resource_type: str) -> list[str]:
        """Canonical URLs of the CN resource profiles constraining `resource_type`."""
        return [url for url, sd in self.structures.items()
                if sd.get("kind") == "resource" and sd.get("derivation") == "constraint"
                and sd.get("type") == resource_type]

    def knows(self, profile_url: str) -> bool:
        sd = self.structures.get(profile_url.split("|", 1)[0])
        return sd is not None and sd.get("derivation") == "constraint"

    def validate(self, resource: dict[str, Any], profile_url: str) -> list[Issue]:
        """Issues of `resource` against the CN profile `profile_url` (and its CN bases)."""
        run = _Run(self)
        try:
            url = profile_url.split("|", 1)[0] if isinstance(profile_url, str) else ""
            sd = self.structures.get(url)
            if sd is None:
                return [Issue("error", "not-supported",
                              f"profile {profile_url!r} is not a CN profile known to this server")]
            if not isinstance(resource, dict) or resource.get("resourceType") != sd.get("type"):
                got = resource.get("resourceType") if isinstance(resource, dict) else None
                return [Issue("error", "invalid", f"[{url}] constrains {sd.get('type')}, "
                              f"the resource is a {got!r}", ("resourceType",))]
            run.profile(url, resource, str(sd.get("type")), 0)
        except _Full:
            pass
        except Exception:  # a validator bug must not turn a $validate into a 500
            log.exception("profile validation of %s failed", profile_url)
            run.issues.append(Issue("warning", "exception", f"validation against {profile_url} "
                                    "could not be completed; the result is partial"))
        return run.issues

    def tree(self, url: str) -> _Node | None:
        if url not in self._trees:
            sd = self.structures.get(url)
            self._trees[url] = _tree(sd) if sd else None
        return self._trees[url]

    def expansion(self, value_set: str) -> Codes | None:
        """The codes of `value_set`, or None when it cannot be expanded here."""
        url = value_set.split("|", 1)[0]
        if url not in self._expansions:
            self._expansions[url] = None  # guards against include.valueSet cycles
            self._expansions[url] = self._expand(url)
        return self._expansions[url]

    def _expand(self, url: str) -> Codes | None:
        vs = self.value_sets.get(url)
        if vs is None:
            return self.registry.value_set_codes.get(url)
        compose = vs.get("compose")
        if not isinstance(compose, dict) or compose.get("exclude"):
            return None
        out: dict[str, set[str]] = {}
        for inc in compose.get("include", []):
            if not isinstance(inc, dict) or inc.get("filter"):
                return None
            for ref in inc.get("valueSet", []):
                sub = self.expansion(ref)
                if sub is None:
                    return None
                for sub_system, codes in sub.items():
                    out.setdefault(sub_system, set()).update(codes)
            system = inc.get("system")
            if not isinstance(system, str):
                continue
            if inc.get("concept"):
                out.setdefault(system, set()).update(
                    c["code"] for c in inc["concept"] if isinstance(c, dict) and "code" in c)
                continue
            cs = self.code_systems.get(system)
            if cs is None or cs.get("content") != "complete":
                return None
            out.setdefault(system, set()).update(_all_codes(cs.get("concept", [])))
        return {system: frozenset(codes) for system, codes in out.items()}


def _all_codes(concepts: Any) -> set[str]:
    codes: set[str] = set()
    for c in concepts if isinstance(concepts, list) else []:
        if isinstance(c, dict):
            if isinstance(c.get("code"), str):
                codes.add(c["code"])
            codes |= _all_codes(c.get("concept"))
    return codes


class _Run:
    """One validation: the issues found so far."""

    def __init__(self, validator: ProfileValidator) -> None:
        self.v = validator
        self.issues: list[Issue] = []

    def add(self, severity: str, code: str, diagnostics: str, location: str) -> None:
        self.issues.append(Issue(severity, code, diagnostics, (location,)))
        if len(self.issues) >= MAX_ISSUES:
            raise _Full

    def profile(self, url: str, value: dict[str, Any], location: str, depth: int) -> None:
        if depth > MAX_PROFILE_DEPTH:
            return
        sd = self.v.structures[url]
        base = sd.get("baseDefinition")
        if isinstance(base, str) and not base.startswith(CORE_PREFIX) \
                and base.split("|", 1)[0] in self.v.structures:
            self.profile(base.split("|", 1)[0], value, location, depth + 1)
        root = self.v.tree(url)
        if root is None:
            return
        item = _Item(value, location)
        self.element(url, root, [item], depth)
        self.children(url, root, item, depth)

    def element(self, url: str, node: _Node, items: list[_Item], depth: int) -> None:
        """Rules of `node` other than cardinality and slicing, on each of `items`."""
        el = node.element
        eid = el.get("id", el.get("path", "?"))
        fixed = _prefixed(el, "fixed")
        pattern = _prefixed(el, "pattern")
        binding: dict[str, Any] = el["binding"] if isinstance(el.get("binding"), dict) else {}
        types = [t for t in el.get("type", []) if isinstance(t, dict)]
        for item in items:
            if fixed is not None and item.value != fixed[1]:
                self.add("error", "value", f"[{url}] {eid}: {fixed[0]} requires exactly "
                         f"{json.dumps(fixed[1], ensure_ascii=False)}", item.location)
            if pattern is not None and not _contains(item.value, pattern[1]):
                self.add("error", "value", f"[{url}] {eid}: {pattern[0]} requires the value to "
                         f"contain {json.dumps(pattern[1], ensure_ascii=False)}", item.location)
            if item.type_ is not None and types and item.type_ not in {
                    _type_suffix(str(t.get("code"))) for t in types}:
                allowed = ", ".join(str(t.get("code")) for t in types)
                self.add("error", "structure", f"[{url}] {eid}: type {item.type_} is not allowed "
                         f"here; expected {allowed}", item.location)
                continue  # its binding and invariants are written for the allowed types
            if binding.get("strength") == "required" and isinstance(binding.get("valueSet"), str):
                self.binding(url, eid, binding["valueSet"], item)
            for c in el.get("constraint", []):
                if isinstance(c, dict) and isinstance(c.get("expression"), str):
                    self.constraint(url, c, item)
            for t in types:
                for profile in t.get("profile", []) if t.get("code") == "Extension" else []:
                    if isinstance(profile, str) and profile in self.v.structures \
                            and isinstance(item.value, dict):
                        self.profile(profile, item.value, item.location, depth + 1)

    def binding(self, url: str, eid: str, value_set: str, item: _Item) -> None:
        codes = self.v.expansion(value_set)
        if codes is None:
            return
        value = item.value
        if isinstance(value, str):
            ok = any(value in c for c in codes.values())
            shown = value
        elif isinstance(value, dict) and "coding" in value:
            codings = [c for c in value["coding"] if isinstance(c, dict)] \
                if isinstance(value["coding"], list) else []
            ok = any(c.get("code") in codes.get(str(c.get("system")), ()) for c in codings)
            shown = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings) or "no coding"
        elif isinstance(value, dict) and ("code" in value or "system" in value):
            ok = value.get("code") in codes.get(str(value.get("system")), ())
            shown = f"{value.get('system')}|{value.get('code')}"
        else:
            return
        if not ok:
            self.add("error", "code-invalid", f"[{url}] {eid}: {shown} is not in the required "
                     f"value set {value_set}", item.location)

    def constraint(self, url: str, c: dict[str, Any], item: _Item) -> None:
        key = c.get("key", "?")
        severity = c.get("severity") if c.get("severity") in ("error", "warning") else "error"
        try:
            result = self.v.compiled(c["expression"])(item.value)
        except Exception as e:  # a broken invariant is reported, not raised
            self.add("warning", "invariant", f"[{url}] invariant {key} could not be evaluated "
                     f"({type(e).__name__}); it was not checked", item.location)
            return
        if result == [False]:
            self.add(str(severity), "invariant", f"[{url}] invariant {key} failed: "
                     f"{c.get('human', c['expression'])}", item.location)

    def children(self, url: str, node: _Node, parent: _Item, depth: int) -> None:
        if not isinstance(parent.value, dict):
            return
        groups: dict[str, list[tuple[str | None, _Node]]] = {}
        for key, child in node.children.items():
            name, _, slice_name = key.partition(":")
            groups.setdefault(name, []).append((slice_name or None, child))
        for name, nodes in groups.items():
            items = self.items(parent, name)
            base = next((n for s, n in nodes if s is None), None)
            slices = [(s, n) for s, n in nodes if s is not None]
            if base is not None:
                self.cardinality(url, base.element, len(items), parent.location, name)
                self.element(url, base, items, depth)
                for item in items:
                    self.children(url, base, item, depth)
            if slices:
                self.slices(url, base, slices, items, parent, name, depth)

    def items(self, parent: _Item, name: str) -> list[_Item]:
        value = parent.value
        if name.endswith("[x]"):
            prefix = name[:-3]
            return [_Item(v, f"{parent.location}.{k}", k[len(prefix):])
                    for k, v in value.items()
                    if k.startswith(prefix) and len(k) > len(prefix) and k[len(prefix)].isupper()]
        if name not in value:
            return [_Item(None, f"{parent.location}.{name}")] if f"_{name}" in value else []
        child = value[name]
        if isinstance(child, list):
            return [_Item(v, f"{parent.location}.{name}[{i}]") for i, v in enumerate(child)]
        return [_Item(child, f"{parent.location}.{name}")]

    def cardinality(self, url: str, el: dict[str, Any], count: int, location: str,
                    name: str) -> None:
        eid = el.get("id", el.get("path", "?"))
        low = el.get("min")
        high = el.get("max")
        if isinstance(low, int) and count < low:
            self.add("error", "required", f"[{url}] {eid}: minimum cardinality {low}, found "
                     f"{count}", f"{location}.{name}")
        if isinstance(high, str) and is_digits(high) and count > int(high):
            self.add("error", "structure", f"[{url}] {eid}: maximum cardinality {high}, found "
                     f"{count}", f"{location}.{name}")

    def slices(self, url: str, base: _Node | None, slices: list[tuple[str, _Node]],
               items: list[_Item], parent: _Item, name: str, depth: int) -> None:
        slicing = base.element.get("slicing") if base is not None else None
        if not isinstance(slicing, dict):
            return
        discriminators = [d for d in slicing.get("discriminator", []) if isinstance(d, dict)]
        matched: set[int] = set()
        undecidable = False
        for _, node in slices:
            verdicts = [self.in_slice(node, discriminators, item) for item in items]
            if not discriminators or any(v is None for v in verdicts):
                # The slice's members cannot be told apart with what the differential states;
                # checking its cardinality would report errors the profile does not mean.
                undecidable = True
                continue
            matches = [i for i, v in enumerate(verdicts) if v]
            matched.update(matches)
            self.cardinality(url, node.element, len(matches), parent.location, name)
            members = [items[i] for i in matches]
            self.element(url, node, members, depth)
            for item in members:
                self.children(url, node, item, depth)
        if slicing.get("rules") == "closed" and not undecidable:
            eid = base.element.get("id", name) if base is not None else name
            for i, item in enumerate(items):
                if i not in matched:
                    self.add("error", "structure", f"[{url}] {eid}: slicing is closed and this "
                             "item matches none of the slices", item.location)

    def in_slice(self, node: _Node, discriminators: list[dict[str, Any]],
                 item: _Item) -> bool | None:
        """Whether `item` belongs to the slice `node`; None when that cannot be decided."""
        for d in discriminators:
            kind, path = d.get("type"), d.get("path")
            if not isinstance(path, str):
                return None
            if kind == "type" and path == "$this":
                codes = {_type_suffix(str(t.get("code"))) for t in node.element.get("type", [])
                         if isinstance(t, dict)}
                if item.type_ not in codes:
                    return False
                continue
            if kind not in ("value", "pattern"):
                return None
            expected = self.slice_value(node, path)
            if expected is None:
                return None
            found = _walk(item.value, path)
            if kind == "value" and not any(f == expected for f in found):
                return False
            if kind == "pattern" and not any(_contains(f, expected) for f in found):
                return False
        return True

    def slice_value(self, node: _Node, path: str) -> Any:
        """The value a slice's members have at discriminator `path`, or None if not stated."""
        target: _Node | None = node
        for part in path.split("."):
            if part == "$this" or target is None:
                continue
            target = target.children.get(part)
        if target is not None:
            fixed = _prefixed(target.element, "fixed") or _prefixed(target.element, "pattern")
            if fixed is not None:
                return fixed[1]
        if path == "url":
            for t in node.element.get("type", []):
                profiles = t.get("profile") if isinstance(t, dict) else None
                if isinstance(profiles, list) and profiles:
                    return profiles[0]
        return None

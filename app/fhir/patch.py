"""JSON Patch (RFC 6902) for the FHIR R4 patch interaction (http://hl7.org/fhir/R4/http.html#patch).

`apply_json_patch` applies a patch document to a parsed resource with the `jsonpatch` library,
operation by operation, so that a failure names the operation and the JSON Pointer at fault.
Any problem with the patch, whatever the input, is raised as `PatchError`; the REST layer
answers it with an OperationOutcome (422 for a well-formed patch that cannot apply, per R4).

Where this is stricter than the `jsonpatch` library, RFC 6902 is followed:
- `test` compares JSON values by JSON type: `true` is not `1` (Python says `True == 1`).
- `move` refuses to move a value into its own child, for arrays as well as objects (§4.4).
Patches may not change a resource's identity: `id` and `resourceType` cannot be added, removed,
replaced, moved or copied over (the id comes from the URL; a `test` on them is fine).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import jsonpatch
import jsonpointer

from app.text import is_digits

__all__ = ["PatchError", "apply_json_patch"]

_OPS = ("add", "remove", "replace", "move", "copy", "test")
_MISSING = object()
_IDENTITY = ("id", "resourceType")
_MAX_DEPTH = 200


class PatchError(Exception):
    """A JSON Patch that is malformed or cannot be applied to this resource."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path  # JSON Pointer of the failing operation, when one is at fault

    def __str__(self) -> str:
        return self.message


def apply_json_patch(resource: dict[str, Any], patch_document: Any) -> dict[str, Any]:
    """The resource with the patch applied; the input is left untouched.

    Raises PatchError, and nothing else, for any patch document.
    """
    ops = _parse(patch_document)
    try:
        doc: Any = copy.deepcopy(resource)
    except RecursionError:
        raise PatchError("The resource is nested too deeply to patch.") from None
    for index, op in enumerate(ops):
        doc = _apply_one(doc, index, op)
    if not isinstance(doc, dict):
        raise PatchError("The patch replaced the resource with something that is not a JSON "
                         "object.", "")
    for name in _IDENTITY:
        if doc.get(name) != resource.get(name):
            raise PatchError(f"The patch changes the resource's {name}, which a patch may not "
                             f"do; {name} must stay {resource.get(name)!r}.", "")
    return doc


def _parse(patch_document: Any) -> list[dict[str, Any]]:
    """Check the patch document's shape (RFC 6902 §3-4) before touching the resource."""
    if not isinstance(patch_document, list):
        kind = type(patch_document).__name__
        raise PatchError("A JSON Patch document must be a JSON array of operations, got "
                         f"{'an object' if isinstance(patch_document, dict) else kind}.")
    ops: list[dict[str, Any]] = []
    for index, op in enumerate(patch_document):
        where = f"Operation {index}"
        if not isinstance(op, dict):
            raise PatchError(f"{where} must be a JSON object like "
                             '{"op": "replace", "path": "/birthDate", "value": "1949-12-31"}.')
        name = op.get("op")
        if name not in _OPS:
            raise PatchError(f"{where} has op {_short(name)}; expected one of "
                             f"{', '.join(_OPS)}.")
        path = _pointer(op, "path", where)
        clean: dict[str, Any] = {"op": name, "path": path}
        if name in ("move", "copy"):
            clean["from"] = _pointer(op, "from", where)
        if name in ("add", "replace", "test"):
            if "value" not in op:
                raise PatchError(f"{where} ({name} {path}) has no value.", path)
            problem = _json_problem(op["value"], 0)
            if problem:
                raise PatchError(f"{where} ({name} {path}): the value {problem}.", path)
            clean["value"] = copy.deepcopy(op["value"])
        ops.append(clean)
    return ops


def _pointer(op: dict[str, Any], member: str, where: str) -> str:
    value = op.get(member)
    if not isinstance(value, str):
        raise PatchError(f"{where} needs a {member!r} member holding a JSON Pointer string such "
                         f"as \"/name/0/family\"; got {_short(value)}.")
    if value and not value.startswith("/"):
        raise PatchError(f"{where}: {member} {value!r} is not a JSON Pointer; it must be empty "
                         "or start with '/'.", value)
    try:
        jsonpointer.JsonPointer(value)
    except jsonpointer.JsonPointerException as exc:
        raise PatchError(f"{where}: {member} {value!r} is not a valid JSON Pointer ({exc}).",
                         value) from None
    return value


def _json_problem(value: Any, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return f"is nested more than {_MAX_DEPTH} levels deep"
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "is not a finite number"
    if isinstance(value, list):
        for item in value:
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return "has a property name that is not a string"
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    return f"is not a JSON value ({type(value).__name__})"


def _parts(pointer: str) -> list[str]:
    return list(jsonpointer.JsonPointer(pointer).parts)


def _apply_one(doc: Any, index: int, op: dict[str, Any]) -> Any:
    name, path = op["op"], op["path"]
    where = f"Operation {index} ({name} {path or '(whole resource)'})"
    parts = _parts(path)
    if name != "test":
        touched = [parts] + ([_parts(op["from"])] if name == "move" else [])
        for target in touched:
            if len(target) == 1 and target[0] in _IDENTITY:
                raise PatchError(f"{where}: a patch may not change the resource's {target[0]}; "
                                 "the id comes from the URL and the type from the endpoint.",
                                 path)
    if name == "test":
        actual = _resolve(doc, parts)
        if actual is _MISSING:
            raise PatchError(f"{where}: test failed, nothing exists at {path}.", path)
        if not _json_equal(actual, op["value"]):
            raise PatchError(f"{where}: test failed, {path} is {_short(actual)}, expected "
                             f"{_short(op['value'])}.", path)
        return doc
    if name in ("move", "copy"):
        source = _parts(op["from"])
        if not _resolvable(doc, source):
            raise PatchError(f"{where}: nothing exists at from {op['from']}.", path)
        if name == "move" and len(source) < len(parts) and parts[:len(source)] == source:
            raise PatchError(f"{where}: cannot move {op['from']} into its own child.", path)
    if name == "remove" and not parts:
        raise PatchError(f"{where}: the whole resource cannot be removed; use DELETE.", path)
    if name in ("remove", "replace") and not _resolvable(doc, parts):
        hint = "; use add to create it" if name == "replace" else ""
        raise PatchError(f"{where}: nothing exists at {path} to {name}{hint}.", path)
    if name == "add" and parts and not _resolvable(doc, parts[:-1]):
        parent = "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts[:-1])
        raise PatchError(f"{where}: the parent {parent} does not exist; add it first.", path)
    try:
        return jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise PatchError(f"{where}: {exc}.", path) from None
    except (TypeError, KeyError, IndexError, ValueError, AttributeError, RecursionError) as exc:
        # The library signals some pointer misuses (a pointer into a string, an index "x" into
        # an array) with bare Python errors.
        raise PatchError(f"{where}: the path does not fit the resource ({exc}).", path) from None


def _resolve(doc: Any, parts: list[str]) -> Any:
    """The value `parts` points at in `doc` (RFC 6901, no `-`), or _MISSING."""
    node = doc
    for part in parts:
        if isinstance(node, dict):
            if part not in node:
                return _MISSING
            node = node[part]
        elif isinstance(node, list):
            if not is_digits(part) or (len(part) > 1 and part[0] == "0") or int(part) >= len(node):
                return _MISSING
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _resolvable(doc: Any, parts: list[str]) -> bool:
    return _resolve(doc, parts) is not _MISSING


def _json_equal(a: Any, b: Any) -> bool:
    """RFC 6902 §4.6 equality: same JSON type and value, objects unordered, arrays ordered."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _short(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

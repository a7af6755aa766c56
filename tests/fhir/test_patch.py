"""JSON Patch (RFC 6902) for the FHIR patch interaction (app/fhir/patch.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.fhir.patch import PatchError, apply_json_patch


def zhang_san() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "zhangsan-001",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"}],
        "active": True,
        "name": [{"use": "official", "text": "张三", "family": "张", "given": ["三"]}],
        "telecom": [{"system": "phone", "value": "13800138000", "use": "mobile"}],
        "gender": "male",
        "birthDate": "1949-12-31",
        "address": [{"city": "北京市", "district": "西城区", "line": ["西长安街1号"]}],
    }


def test_patch_applies_rfc6902_operations_in_order() -> None:
    out = apply_json_patch(zhang_san(), [
        {"op": "test", "path": "/id", "value": "zhangsan-001"},
        {"op": "replace", "path": "/telecom/0/value", "value": "13911112222"},
        {"op": "add", "path": "/name/-", "value": {"use": "nickname", "text": "老张"}},
        {"op": "add", "path": "/maritalStatus", "value": {"text": "已婚"}},
        {"op": "remove", "path": "/active"},
        {"op": "copy", "from": "/address/0", "path": "/address/-"},
        {"op": "move", "from": "/address/1", "path": "/address/0"},
    ])
    assert out["telecom"][0]["value"] == "13911112222"
    assert out["name"][1] == {"use": "nickname", "text": "老张"}
    assert out["maritalStatus"] == {"text": "已婚"}
    assert "active" not in out
    assert len(out["address"]) == 2


def test_patch_leaves_the_input_untouched() -> None:
    source = zhang_san()
    before = copy.deepcopy(source)
    apply_json_patch(source, [{"op": "add", "path": "/name/0/given/-", "value": "丰"}])
    assert source == before


def test_added_values_are_not_shared_with_the_patch_document() -> None:
    patch: list[dict[str, Any]] = [
        {"op": "add", "path": "/contact", "value": [{"name": {"text": "张小红"}}]}]
    out = apply_json_patch(zhang_san(), patch)
    out["contact"][0]["name"]["text"] = "改了"
    assert patch[0]["value"][0]["name"]["text"] == "张小红"


@pytest.mark.parametrize("patch", [
    [{"op": "replace", "path": "/id", "value": "lisi-002"}],
    [{"op": "remove", "path": "/id"}],
    [{"op": "add", "path": "/resourceType", "value": "Practitioner"}],
    [{"op": "move", "from": "/id", "path": "/language"}],
    [{"op": "copy", "from": "/gender", "path": "/id"}],
])
def test_patching_identity_is_refused(patch: list[dict[str, Any]]) -> None:
    with pytest.raises(PatchError, match="may not change the resource's"):
        apply_json_patch(zhang_san(), patch)


def test_replacing_the_whole_resource_may_not_change_its_id() -> None:
    other = zhang_san() | {"id": "lisi-002"}
    with pytest.raises(PatchError, match="id must stay 'zhangsan-001'"):
        apply_json_patch(zhang_san(), [{"op": "replace", "path": "", "value": other}])
    same = zhang_san() | {"gender": "female"}
    assert apply_json_patch(zhang_san(), [{"op": "replace", "path": "", "value": same}]) == same


def test_test_operation_compares_json_types_strictly() -> None:
    with pytest.raises(PatchError, match="test failed, /active is True, expected 1"):
        apply_json_patch(zhang_san(), [{"op": "test", "path": "/active", "value": 1}])
    assert apply_json_patch(zhang_san(), [{"op": "test", "path": "/active", "value": True}])


def test_failed_test_stops_the_patch_and_names_the_operation() -> None:
    with pytest.raises(PatchError) as caught:
        apply_json_patch(zhang_san(), [
            {"op": "replace", "path": "/gender", "value": "female"},
            {"op": "test", "path": "/birthDate", "value": "1950-01-01"},
        ])
    assert caught.value.path == "/birthDate"
    assert str(caught.value) == ("Operation 1 (test /birthDate): test failed, /birthDate is "
                                 "'1949-12-31', expected '1950-01-01'.")


@pytest.mark.parametrize(("patch", "path", "fragment"), [
    ([{"op": "replace", "path": "/deceasedBoolean", "value": True}], "/deceasedBoolean",
     "nothing exists at /deceasedBoolean to replace; use add to create it"),
    ([{"op": "remove", "path": "/name/3"}], "/name/3", "nothing exists at /name/3"),
    ([{"op": "add", "path": "/contact/0/name", "value": {"text": "张小红"}}],
     "/contact/0/name", "the parent /contact/0 does not exist"),
    ([{"op": "add", "path": "/name/5", "value": {"text": "张三"}}], "/name/5",
     "outside of list"),
    ([{"op": "move", "from": "/name", "path": "/name/0/period"}], "/name/0/period",
     "into its own child"),
    ([{"op": "copy", "from": "/photo", "path": "/link"}], "/link",
     "nothing exists at from /photo"),
    ([{"op": "add", "path": "/birthDate/year", "value": 1949}], "/birthDate/year",
     "birthDate"),
    ([{"op": "remove", "path": ""}], "", "whole resource cannot be removed"),
])
def test_operations_that_cannot_apply_say_where_and_why(patch: list[dict[str, Any]], path: str,
                                                        fragment: str) -> None:
    with pytest.raises(PatchError) as caught:
        apply_json_patch(zhang_san(), patch)
    assert caught.value.path == path
    assert fragment in str(caught.value)


@pytest.mark.parametrize(("patch", "fragment"), [
    ({"op": "replace", "path": "/gender", "value": "female"}, "must be a JSON array"),
    ("[]", "must be a JSON array"),
    (None, "must be a JSON array"),
    (["replace"], "must be a JSON object"),
    ([{"path": "/gender", "value": "female"}], "expected one of add, remove"),
    ([{"op": "update", "path": "/gender", "value": "female"}], "'update'"),
    ([{"op": "replace", "value": "female"}], "needs a 'path' member"),
    ([{"op": "replace", "path": "gender", "value": "female"}], "not a JSON Pointer"),
    ([{"op": "replace", "path": "/name/~2", "value": "x"}], "not a valid JSON Pointer"),
    ([{"op": "replace", "path": "/gender"}], "has no value"),
    ([{"op": "move", "path": "/gender"}], "needs a 'from' member"),
    ([{"op": "add", "path": "/x", "value": float("nan")}], "not a finite number"),
    ([{"op": "add", "path": "/x", "value": {1: "one"}}], "property name that is not a string"),
    ([{"op": "add", "path": "/x", "value": {1, 2}}], "not a JSON value"),
])
def test_malformed_patch_documents_are_refused(patch: Any, fragment: str) -> None:
    with pytest.raises(PatchError) as caught:
        apply_json_patch(zhang_san(), patch)
    assert fragment in str(caught.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=3),
    max_leaves=15,
)
pointers = st.lists(st.sampled_from(["name", "0", "-", "given", "id", "telecom", "01", "~1",
                                     "gender", "", "x"]), max_size=4).map(
    lambda parts: "".join("/" + p for p in parts))
operations = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "nope"]),
     "path": pointers | json_values},
    optional={"value": json_values, "from": pointers | json_values},
)


@settings(max_examples=400, deadline=None)
@given(st.lists(operations, max_size=4) | json_values)
def test_any_patch_document_gives_a_result_or_a_patch_error(patch: Any) -> None:
    source = zhang_san()
    try:
        out = apply_json_patch(source, patch)
    except PatchError as exc:
        assert str(exc)
    else:
        assert out["id"] == "zhangsan-001" and out["resourceType"] == "Patient"
    assert source == zhang_san()

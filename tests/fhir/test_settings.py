"""The public base URL follows the address the server listens on unless it is set."""

from __future__ import annotations

import pytest

from app.config import Settings


def test_the_base_url_follows_host_and_port_unless_given(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("YILIAN_BASE_URL", "YILIAN_HOST", "YILIAN_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().base_url == "http://127.0.0.1:8080/fhir"
    assert Settings(port=18080).base_url == "http://127.0.0.1:18080/fhir"
    assert Settings(host="0.0.0.0").base_url == "http://127.0.0.1:8080/fhir"
    assert Settings(host="::1", port=8443).base_url == "http://[::1]:8443/fhir"
    assert Settings(port=18080, base_url="https://fhir.example.cn/fhir").base_url == \
        "https://fhir.example.cn/fhir"
    monkeypatch.setenv("YILIAN_PORT", "28080")
    assert Settings().base_url == "http://127.0.0.1:28080/fhir"

"""Fixtures of the consent tests: `w`, the SMART-enabled app of `tests/auth/authorize_flow.py`
(two patients, a doctor, registered apps), and `keyer`, a keyed hasher with a fixed secret."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.audit.hashing import Keyer
from tests.auth.authorize_flow import World, world


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path) as built:
        yield built


@pytest.fixture
def keyer() -> Keyer:
    return Keyer(bytes.fromhex("5f1c9a7e3b2d4c6a8e0f1b3d5c7a9e2f4b6d8c0a1e3f5b7d9c2a4e6f8b0d1c3a"))

"""Fixtures of the SMART flow tests: `w`, a SMART-enabled app with the world of
`tests/auth/authorize_flow.py` (two patients, a doctor, registered apps)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth.authorize_flow import World, world


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path) as built:
        yield built

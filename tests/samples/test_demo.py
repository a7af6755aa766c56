"""The demo hospital `make run` loads at first start."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.pipeline.hooks import Hooks
from app.samples.demo import DEMO_PATIENTS, load_demo_if_empty
from app.search.query import parse_search
from app.server import build_service
from tests.conftest import make_settings


def test_demo_hospital_loads_once_into_an_empty_store(tmp_path: Path) -> None:
    async def run() -> tuple[int, int, int]:
        service, _ = build_service(make_settings(tmp_path), Hooks())
        await service.store.start()
        try:
            first = await load_demo_if_empty(service)
            second = await load_demo_if_empty(service)
            query, _ = parse_search(("Patient",), [("name", "zhang")], service.parse_ctx)
            found = (await service.store.search(query)).total or 0
            return first, second, found
        finally:
            await service.store.close()

    first, second, zhang = asyncio.run(run())
    assert first > DEMO_PATIENTS * 10
    assert second == 0
    assert 0 < zhang < DEMO_PATIENTS  # some 张 among them, found by pinyin

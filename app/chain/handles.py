"""The chain handle a server worker uses, kept in step with var/chain/deployment.json.

`yilian serve` (or the anchoring worker after a reset) rewrites the deployment record; each
worker re-reads it when the file changes, and retries every few seconds while there is none.
"""

from __future__ import annotations

import logging
import time

from app.chain.node import ChainError, ChainHandle, deployment_path, load_handle
from app.config import Settings

log = logging.getLogger("yilian.chain")


class HandleSource:
    """Callable returning the current `ChainHandle` (None: chain off or not deployed yet)."""

    RETRY_SECONDS = 2.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._handle: ChainHandle | None = None
        self._mtime: float | None = None
        self._checked = 0.0

    def __call__(self) -> ChainHandle | None:
        if self.settings.chain == "off":
            return None
        now = time.monotonic()
        if self._handle is not None and now - self._checked < 1.0:
            return self._handle
        if self._handle is None and now - self._checked < self.RETRY_SECONDS and self._checked:
            return None
        self._checked = now
        try:
            mtime = deployment_path(self.settings).stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if self._handle is not None and mtime == self._mtime:
            return self._handle
        try:
            self._handle = load_handle(self.settings)
            self._mtime = mtime
        except ChainError as exc:
            log.error("chain deployment unusable: %s", exc)
            self._handle = None
        return self._handle

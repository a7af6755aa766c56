"""ASGI entry point for uvicorn workers: `app.asgi:app`, configured from `YILIAN_*`."""

from app.server import create_app

app = create_app(freeze_heap=True)

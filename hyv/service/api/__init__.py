"""The HTTP API: `create_app(settings)` builds the FastAPI application (hyv.service.api.app)."""

from hyv.service.api.app import create_app

__all__ = ["create_app"]

"""The HTTP gateway: a FastAPI app factory, routers per resource, problem+json errors."""

from api.app import create_app

__all__ = ["create_app"]

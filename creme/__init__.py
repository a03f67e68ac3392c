"""Python client of the CREME model-editing service: ``from creme import Client``."""

from creme.client import AsyncClient, Client, CremeError

__all__ = ["AsyncClient", "Client", "CremeError"]

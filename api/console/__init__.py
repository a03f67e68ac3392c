"""The web console: a single page at ``/`` with its scripts and styles under ``/console``, no build step."""

from api.console.router import install_console

__all__ = ["install_console"]

"""Worker process: load the model, reconcile, consume jobs, heartbeat, report progress."""

from workers.worker import Worker, main

__all__ = ["Worker", "main"]

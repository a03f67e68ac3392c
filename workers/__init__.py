"""The worker side: the worker loop (``worker``), job claims and the sweep (``claims``), the job runner
(``runner``, ``edit_job``, ``context``), reconciliation (``reconcile``) and the heartbeat (``heartbeat``)."""

from workers.worker import Worker, main

__all__ = ["Worker", "main"]

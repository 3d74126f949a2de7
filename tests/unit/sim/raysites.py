"""Site handlers for the Ray transport tests, importable by the tests' Ray workers."""

from __future__ import annotations

import os

import numpy as np

from fedcare.core.message import EvalResult, Reply, Task


class EchoSites:
    """Every site answers with the sum of the task's weights and whether they were writable
    (the object store's arrays are read-only views); ``crash`` sites raise, ``die`` sites end
    their actor's process."""

    def __init__(self, crash: tuple[str, ...] = (), die: tuple[str, ...] = ()) -> None:
        self.crash, self.die = crash, die

    def __call__(self, site_id: str):
        def handle(task: Task) -> Reply:
            if site_id in self.crash:
                raise ValueError(f"{site_id} cannot train")
            if site_id in self.die:
                os._exit(3)
            weights = task.weights or {}
            total = float(sum(np.sum(a, dtype=np.float64) for a in weights.values()))
            writable = float(any(a.flags.writeable for a in weights.values()))
            return Reply(task.task_id, site_id, result=EvalResult(
                1, {"sum": total, "writable": writable, "pid": float(os.getpid())}))

        return handle

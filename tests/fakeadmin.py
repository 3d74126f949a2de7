"""A fake admin API for the dashboard's unit tests: documents shaped as the server's, and a
record of every call (a refused action must never reach it)."""

from __future__ import annotations

import threading

from fedcare.dashboard.client import AdminCallError, may

JOB = "job-0123456789"
DONE = "job-abcdefabcd"


def rounds(count):
    return [{"round_num": r, "trained_sites": ["site-0", "site-1"] if r else [],
             "train_metrics": {"loss": 1.0 / (r + 1)} if r else {},
             "eval_metrics": {"mse": 2.0 / (r + 1)},
             "site_eval": {s: {"num_samples": 5, "metrics": {"mse": 2.0 / (r + 1) + i}}
                           for i, s in enumerate(["site-0", "site-1"])},
             "site_train": {}, "duration_s": 0.5,
             "failures": ([{"site_id": "site-2", "round_num": r, "kind": "train",
                            "message": "disk full", "connection_lost": False}]
                          if r == 1 else [])}
            for r in range(count)]


MATRIX = {"job_id": DONE, "round_num": 2, "models": ["global", "local:site-0"],
          "sites": ["site-0", "site-1"],
          "cells": {"global": {"site-0": {"num_samples": 5, "metrics": {"mse": 0.1}},
                               "site-1": {"num_samples": 5, "metrics": {"mse": 0.3}}},
                    "local:site-0": {"site-0": {"num_samples": 5, "metrics": {"mse": 0.05}},
                                     "site-1": {"error": "site-1 refused the task"}}}}


class FakeWatch:
    def __init__(self, updates, then=None):
        self.updates = updates
        self.then = then  # raised after the updates, as a stream the server ends with an error
        self.cancelled = threading.Event()

    def __iter__(self):
        for update in self.updates:
            if self.cancelled.is_set():
                return
            yield update
        if self.then is not None:
            raise self.then

    def cancel(self):
        self.cancelled.set()


class FakeAdmin:
    """One admin of ``role``; enforces the server's permissions as the server does."""

    server = "127.0.0.1:8443"

    def __init__(self, role="project_admin", name="admin"):
        self.role = role
        self.name = name
        self.calls = []
        self.watches = []
        self.watch_error = None
        self.jobs = {
            JOB: {"job_id": JOB, "entry_point": "toyjob:make_job", "params": {"num_rounds": 3},
                  "status": "running", "submitted_by": "admin", "created_s": 1.7e9,
                  "round_num": 1, "num_rounds": 3, "error": None, "summary": None,
                  "package": None,
                  "failed_sites": {"site-2": {"count": 1, "round_num": 1, "kind": "train",
                                              "message": "disk full"}}},
            DONE: {"job_id": DONE, "entry_point": "toyjob:make_job", "params": {},
                   "status": "finished", "submitted_by": "admin", "created_s": 1.6e9,
                   "round_num": 2, "num_rounds": 2, "error": None,
                   "summary": "finished with 2 of 2 sites", "package": None, "failed_sites": {}},
        }

    def _allow(self, action):
        self.calls.append(action)
        if not may(self.role, action):
            raise AdminCallError(action, "PERMISSION_DENIED",
                                 f"{self.name}: role {self.role} may not {action.lower()}")

    def _job(self, job_id):
        if job_id not in self.jobs:
            raise AdminCallError("Metrics", "NOT_FOUND", f"no job {job_id}")
        return self.jobs[job_id]

    def status(self):
        self._allow("Status")
        return [dict(j) for j in self.jobs.values()]

    def sites(self):
        self._allow("Sites")
        return {"connected": ["site-0", "site-1"], "count": 2,
                "presence": {"site-0": {"connected": True, "since_s": 1.7e9,
                                        "org": "St Mary's", "version": "0.1.0",
                                        "last_message_age_s": 42.0,
                                        "policy": {"outbound_filters": ["clip_update_norm"],
                                                   "inbound_filters": [],
                                                   "required_filters": ["svt"],
                                                   "budget_set": True, "min_rows": 20,
                                                   "task_kinds": ["evaluate", "train"]}},
                             "site-1": {"connected": True, "since_s": None},
                             "site-3": {"connected": False, "since_s": 1.7e9 + 60}},
                "received_bytes": 3_500_000, "sent_bytes": 12_000}

    def metrics(self, job_id):
        self._allow("Metrics")
        return rounds(self._job(job_id)["round_num"] + 1)

    def watch(self, job_id):
        self._allow("Watch")
        job = self._job(job_id)
        updates = [{**job, "round_num": r, "eval_metrics": {"mse": 1.0 / (r + 1)},
                    "new_failures": [], "status": "running" if r < 3 else "finished"}
                   for r in range(1, 4)]
        updates[0]["new_failures"] = [{"site_id": "site-2", "round_num": 1, "kind": "train",
                                       "message": "disk full"}]
        watch = FakeWatch(updates, self.watch_error)
        self.watches.append(watch)
        return watch

    def abort(self, job_id):
        self._allow("Abort")
        self._job(job_id)["status"] = "aborted"
        return {"job_id": job_id, "result": "aborted"}

    def model_npz(self, job_id):
        self._allow("Download")
        return b"PK-fake-npz"

    def result(self, job_id, name):
        self._allow("Result")
        return MATRIX if job_id == DONE else None

    def submit_package(self, package):
        self._allow("Submit")
        return JOB

"""Shared test set-up: tests/ is importable (toyjob), and runs go to tmp folders."""

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

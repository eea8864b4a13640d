"""Bluetooth OTA tests: the real Bumble host stack over in-process virtual controllers."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ble: Bluetooth tests over Bumble virtual controllers")

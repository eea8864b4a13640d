"""Which database the suite runs on: SQLite unless BOTA_OTA_TEST_DATABASE_URL names a PostgreSQL server."""

from __future__ import annotations

import os

PG_URL = os.environ.get("BOTA_OTA_TEST_DATABASE_URL")

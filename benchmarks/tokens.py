"""Seeded devices' ids and tokens, computed from their number (no imports: the simulator process and the
load generator use this without loading the server). lua/heartbeat.lua builds the same token string."""

from __future__ import annotations


def device_id(i: int) -> str:
    return f"BENCH-{i:06d}"


def device_token(i: int) -> str:
    """Same shape as a real token (bota_dt_ + 43 characters)."""
    return f"bota_dt_bench{i:038d}"

"""All settings in one place, read from environment variables prefixed ``BOTA_OTA_``."""

from __future__ import annotations

import os
import secrets
import time
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BOTA_OTA_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where the SQLite database, local blobs and the secret live.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/bota-ota.db. PostgreSQL: postgresql+psycopg://...",
    )
    storage_backend: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "bota-ota"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_create_bucket: bool = Field(False, description="Create the bucket at start-up if it does not exist.")
    public_url: str | None = Field(
        None,
        description="Base URL devices use to reach this server (for local signed URLs); default: the request's.",
    )
    signed_url_ttl_s: int = Field(15 * 60, ge=1, le=7 * 24 * 3600)
    heartbeat_interval_s: int = Field(60, ge=1, le=3600)
    ble_relay_timeout_s: int = Field(
        180, ge=5, le=86400, description="BLE mode ends when the app relays nothing for this long."
    )
    app_token_ttl_s: int = Field(30 * 24 * 3600, ge=60, description="Lifetime of a mobile-app login.")
    telemetry_flush_interval_s: float = Field(
        2.0,
        gt=0,
        le=600,
        description="Routine heartbeats' last-seen time and readings are written in batches at least this often.",
    )
    device_cache_size: int = Field(
        200_000,
        ge=0,
        le=100_000_000,
        description="Devices whose heartbeat state each server process caches (about 1 KiB each; 0: no cache).",
    )
    sweep_interval_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="How often each instance runs the BLE-mode and stalled-delivery timeouts and removes stale "
        "temporary uploads.",
    )
    rollout_interval_s: float = Field(
        2.0,
        gt=0,
        le=600,
        description="How often each instance evaluates running rollouts (outcomes, the failure gate, stage starts).",
    )
    rollout_membership_interval_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="How often a running rollout with include_new_devices looks for devices that came to match.",
    )
    db_max_connections: int = Field(
        30,
        ge=2,
        le=1000,
        description="PostgreSQL connections one server process (each --workers worker) may open at most.",
    )
    delivery_timeout_s: int = Field(
        24 * 3600,
        ge=0,
        description="A delivered assignment with no progress for this long fails with delivery_timeout (0: never).",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="Attempts an assignment gets (a rollback or a transient failure ends one) before it fails.",
    )
    retry_backoff_s: int = Field(
        600,
        ge=0,
        le=86400,
        description="The wait after a failed attempt before the next delivery; doubles per attempt (6 h at most).",
    )
    delivery_min_battery: int = Field(
        30, ge=0, le=100, description="Default policy: no update starts below this battery percentage unless charging."
    )
    delivery_networks: list[Literal["wifi", "cellular"]] = Field(
        ["wifi", "cellular"],
        min_length=1,
        description='Default policy: links an update may be downloaded over, as JSON (["wifi"]: not over cellular).',
    )
    delivery_defer_while_unsynced: bool = Field(
        False, description="Default policy: wait while the device holds recordings that are not synced yet."
    )
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    stale_upload_s: int = Field(
        1800,
        ge=60,
        le=7 * 24 * 3600,
        description="A temporary upload file not written for this long is left over from a crash and removed.",
    )
    secret_key: str | None = Field(
        None,
        description="Signs local download URLs. Default: generated once and kept in <data_dir>/secret_key.",
    )
    log_key_file: Path | None = Field(
        None,
        description="Ed25519 private key (PEM) that signs the release transparency log's tree heads. Default: "
        "<data_dir>/transparency-log-key.pem, generated (mode 0600) on first start. All instances share one.",
    )
    login_max_failures: int = Field(
        5, ge=1, le=1000, description="Failed portal sign-ins per e-mail address before it is locked for a while."
    )
    login_window_s: int = Field(
        15 * 60, ge=10, le=86400, description="The window of the login rate limit (and how long a lock lasts)."
    )
    app_login_max_failures: int = Field(
        10, ge=1, le=1000, description="Failed mobile-app log-ins per e-mail address in the window before it is locked."
    )
    claim_max_failures: int = Field(
        10,
        ge=1,
        le=1000,
        description="Wrong claim codes per device, and per app user, in the window before claims are refused.",
    )
    secure_cookies: bool = Field(False, description="Send the portal cookie over HTTPS only (set it in production).")
    log_level: str = "info"
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans and metrics, sent to the globally configured providers. "
        "Off by default: checking for providers costs every request, the heartbeat included, about 12 microseconds.",
    )

    @model_validator(mode="after")
    def _check_s3(self) -> Settings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("BOTA_OTA_S3_BUCKET is required when BOTA_OTA_STORAGE_BACKEND=s3")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'bota-ota.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def upload_tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @cached_property
    def resolved_secret_key(self) -> str:
        """The configured secret, or one generated on first use and kept in the data dir.

        Several instances behind a load balancer must share one: set BOTA_OTA_SECRET_KEY.
        """
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        try:
            # O_EXCL: when several workers start at once, the first key written wins and all read it.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            for _ in range(50):  # the winner may not have written it yet
                existing = path.read_text().strip()
                if existing:
                    return existing
                time.sleep(0.02)
            raise RuntimeError(f"{path} exists but is empty; delete it or set BOTA_OTA_SECRET_KEY") from None
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key

    @property
    def resolved_log_key_file(self) -> Path:
        """The transparency log's signing key (transparency/logkey.py creates it if it is missing)."""
        return self.log_key_file or self.data_dir / "transparency-log-key.pem"

    @property
    def online_window_s(self) -> int:
        """A device counts as online if it was seen within two heartbeat intervals plus slack."""
        return self.heartbeat_interval_s * 2 + 10

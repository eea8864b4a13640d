"""One simulated Bota device: a heartbeat loop and an OTA state machine, driven only over HTTP.

    idle ──manifest──► downloading ──► verifying ──► writing ──► rebooting ──► idle (new version)
                          │               │             │
                          └─ 10 retries ──┴─ mismatch ──┴─ power loss ──► failed report, old version

It does what docs/device-protocol.md asks of firmware: heartbeat at the interval the server returns,
report progress in the ``ota`` block, resume a broken download with ``Range``, retry up to 10 times
with backoff, wait for a fresh URL after a 403, check size/CRC32/SHA-256 before flashing, report the
new version after the reboot, and never start a transfer while recording.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bota_ota.sim.faults import CUT_HEADER, FaultProxy, Faults

log = logging.getLogger(__name__)

MAX_DOWNLOAD_RETRIES = 10
CHUNK = 64 * 1024


@dataclass
class Timing:
    reboot_s: float = 3.0
    write_s: float = 0.5
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0
    interval_override_s: float | None = None
    url_wait_intervals: float = 5.0  # how many heartbeat intervals to wait for a fresh URL after a 403


@dataclass
class DeviceStats:
    heartbeats: int = 0
    heartbeat_errors: int = 0
    applied: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    resumed: int = 0
    bytes: int = 0
    expired_urls: int = 0
    deferred: int = 0

    def add(self, other: DeviceStats) -> None:
        self.heartbeats += other.heartbeats
        self.heartbeat_errors += other.heartbeat_errors
        self.applied += other.applied
        self.failed.update(other.failed)
        self.retries += other.retries
        self.resumed += other.resumed
        self.bytes += other.bytes
        self.expired_urls += other.expired_urls
        self.deferred += other.deferred


@dataclass
class Job:
    assignment_id: str
    version: str
    url: str
    expires_at: float
    size: int
    crc32: int
    sha256: str

    @classmethod
    def from_manifest(cls, m: dict[str, Any]) -> Job:
        return cls(
            assignment_id=m["assignment_id"],
            version=m["version"],
            url=m["url"],
            expires_at=datetime.fromisoformat(m["expires_at"]).timestamp(),
            size=int(m["size"]),
            crc32=int(m["crc32"]),
            sha256=m["sha256"],
        )


@dataclass
class Network:
    """The device side of the network: HTTP clients and how many requests may be in flight at once.

    The slots matter with thousands of devices in one process: httpcore scans its whole queue of waiting
    requests each time a connection frees up, so letting 10,000 requests queue there costs O(n²) CPU.
    Waiting on a semaphore first keeps that queue no longer than the pool.
    """

    heartbeats: httpx.AsyncClient
    downloads: httpx.AsyncClient
    heartbeat_slots: asyncio.Semaphore
    download_slots: asyncio.Semaphore

    @classmethod
    def create(cls, server: str, *, heartbeat_connections: int = 200, download_connections: int = 50) -> Network:
        def client(n: int) -> httpx.AsyncClient:
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            return httpx.AsyncClient(base_url=server, limits=limits, timeout=httpx.Timeout(30, connect=10))

        return cls(
            heartbeats=client(heartbeat_connections),
            downloads=client(download_connections),
            heartbeat_slots=asyncio.Semaphore(heartbeat_connections),
            download_slots=asyncio.Semaphore(download_connections),
        )

    async def aclose(self) -> None:
        await self.heartbeats.aclose()
        await self.downloads.aclose()


class DownloadFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SimDevice:
    def __init__(
        self,
        *,
        device_id: str,
        token: str,
        model: str,
        firmware_version: str,
        net: Network,
        flash_dir: Path,
        faults: Faults | None = None,
        rng: random.Random | None = None,
        timing: Timing | None = None,
        proxies: dict[tuple[str, int], FaultProxy] | None = None,
    ) -> None:
        self.device_id = device_id
        self.token = token
        self.model = model
        self.firmware_version = firmware_version
        self.net = net
        self.flash_path = flash_dir / f"{device_id}.img"
        self.faults = faults or Faults()
        self.rng = rng or random.Random()
        self.timing = timing or Timing()
        self.proxies = proxies
        self.state = "idle"
        self.stats = DeviceStats()
        self.interval_s: float = self.timing.interval_override_s or 60.0
        self.recording_until = 0.0
        self.job: Job | None = None
        self.ota_report: dict[str, Any] | None = None
        self.progress = 0
        self.battery = self.rng.randint(30, 100)
        self.network = self.rng.choice(["wifi", "cellular"])
        self._wake = asyncio.Event()
        self._url_renewed = asyncio.Event()
        self._powered = asyncio.Event()
        self._powered.set()
        # Cleared while a phone is connected over Bluetooth: the device then pauses its own heartbeat.
        self._ble_free = asyncio.Event()
        self._ble_free.set()
        self._task: asyncio.Task[None] | None = None
        self.unauthorized = False
        # Assignments this device finished (applied or gave up on): a manifest for one of them that
        # was already in flight when the update ended must not start it again.
        self._finished: set[str] = set()
        self._heartbeat_in_flight = False

    # ---- public controls ---------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        return time.monotonic() < self.recording_until

    def start_recording(self, seconds: float) -> None:
        self.recording_until = time.monotonic() + seconds

    def stop_recording(self) -> None:
        self.recording_until = 0.0
        self._wake.set()

    @property
    def heartbeat_paused(self) -> bool:
        """True once the heartbeat is paused *and* no heartbeat sent before the pause is still in flight."""
        return not self._ble_free.is_set() and not self._heartbeat_in_flight

    def pause_heartbeat(self) -> None:
        """A phone connected over BLE: the app relays our status now."""
        self._ble_free.clear()

    def resume_heartbeat(self) -> None:
        """The phone went away: speak for ourselves again, at once."""
        self._ble_free.set()
        self._wake.set()

    def applied_over_ble(self, version: str) -> None:
        self.firmware_version = version
        self.stats.applied += 1

    # ---- heartbeat loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, *, first_delay_s: float = 0.0) -> None:
        if first_delay_s:
            await _sleep_or(stop, first_delay_s)
        while not stop.is_set() and not self.unauthorized:
            await self._powered.wait()
            if not self._ble_free.is_set():
                await _sleep_or(stop, 3600, self._ble_free)
                continue
            self._heartbeat_in_flight = True
            try:
                await self.heartbeat()
            finally:
                self._heartbeat_in_flight = False
            self._wake.clear()
            await _sleep_or(stop, self.interval_s, self._wake)
        if self._task is not None:
            self._task.cancel()

    async def heartbeat(self) -> dict[str, Any] | None:
        # A recording starts only while no update is under way: firmware transfer and recording never
        # overlap (the seed: "no active recording on the device during transfer").
        if self.faults.record and self.job is None and not self.recording and self.rng.random() < self.faults.record:
            self.start_recording(self.faults.record_s * self.rng.uniform(0.5, 1.5))
        body: dict[str, Any] = {
            "firmware_version": self.firmware_version,
            "recording": self.recording,
            "battery": self.battery,
            "network": self.network,
            "rssi": self.rng.randint(-90, -40),
        }
        report = self.ota_report
        if report is not None:
            body["ota"] = report
        try:
            async with self.net.heartbeat_slots:
                r = await self.net.heartbeats.post(
                    "/api/device/v1/heartbeat", json=body, headers={"Authorization": f"Bearer {self.token}"}
                )
        except httpx.HTTPError as exc:
            self.stats.heartbeat_errors += 1
            log.debug("%s heartbeat failed: %s", self.device_id, exc)
            return None
        if r.status_code == 401:
            self.unauthorized = True
            log.warning("%s: the server refused the device token; stopping", self.device_id)
            return None
        if r.status_code != 200:
            self.stats.heartbeat_errors += 1
            return None
        self.stats.heartbeats += 1
        reply: dict[str, Any] = r.json()
        if report is not None and report.get("state") == "failed" and self.ota_report is report:
            self.ota_report = None  # the failure was delivered
        if not self.timing.interval_override_s:
            self.interval_s = float(reply.get("heartbeat_interval_s") or 60)
        if reply.get("ota_deferred"):
            self.stats.deferred += 1
        manifest = reply.get("ota")
        if manifest:
            self._on_manifest(manifest)
        return reply

    def _on_manifest(self, manifest: dict[str, Any]) -> None:
        job = Job.from_manifest(manifest)
        if self.job is not None and self.job.assignment_id == job.assignment_id:
            # Same update: only take the fresher URL (never restart because a manifest arrived).
            if job.url != self.job.url:
                self.job.url, self.job.expires_at = job.url, job.expires_at
                self._url_renewed.set()
            return
        if self.state != "idle" or self.recording or job.assignment_id in self._finished:
            return
        if job.version == self.firmware_version:
            return  # a stale manifest (a reply to a heartbeat sent before we rebooted onto it)
        self.job = job
        self._task = asyncio.create_task(self._update(job), name=f"ota-{self.device_id}")

    # ---- the OTA state machine ---------------------------------------------------------------
    def _report(self, state: str, progress: int | None = None, error: str | None = None) -> None:
        assert self.job is not None
        self.state = state if state != "failed" else "idle"
        report: dict[str, Any] = {"assignment_id": self.job.assignment_id, "state": state}
        if progress is not None:
            report["progress"] = progress
        if error is not None:
            report["error"] = error
        self.ota_report = report

    async def _update(self, job: Job) -> None:
        try:
            self._report("downloading", 0)
            await self._download(job)
            self._report("verifying", 100)
            error = await asyncio.to_thread(self._verify, job)
            if error:
                self._fail(error)
                return
            self._report("writing", 0)
            await asyncio.sleep(self.timing.write_s)
            if self.faults.power_loss and self.rng.random() < self.faults.power_loss:
                await self._reboot()  # power comes back; the half-written image is discarded
                self._fail("power_loss")
                return
            self._report("rebooting")
            await self._reboot()
            self.firmware_version = job.version
            self._finished.add(job.assignment_id)
            self.stats.applied += 1
            self.ota_report = None
            self.state = "idle"
            self.job = None
        except DownloadFailed as exc:
            self._fail(exc.reason)
        except asyncio.CancelledError:
            raise
        except Exception:  # a simulator bug must not take the whole fleet down
            log.exception("%s: update crashed", self.device_id)
            self._fail("simulator_error")
        finally:
            self.flash_path.unlink(missing_ok=True)
            self._wake.set()  # tell the server at once (a real device heartbeats on boot)

    def _fail(self, error: str) -> None:
        self.stats.failed[error] += 1
        if self.job is not None:
            self._finished.add(self.job.assignment_id)
        self._report("failed", error=error)
        self.job = None
        self.state = "idle"

    async def _reboot(self) -> None:
        self._powered.clear()
        self.state = "rebooting"
        await asyncio.sleep(self.timing.reboot_s)
        self._powered.set()

    async def _download(self, job: Job) -> None:
        self.flash_path.parent.mkdir(parents=True, exist_ok=True)
        # A drop somewhere in the middle 80% of the file, so there is always something to resume from.
        cut_at = (
            self.rng.randint(max(1, job.size // 10), max(1, job.size * 9 // 10))
            if self.rng.random() < self.faults.drop
            else None
        )
        corrupt_at = self.rng.randrange(job.size) if self.rng.random() < self.faults.corrupt else None
        stale_url: str | None = None
        if self.rng.random() < self.faults.expire:
            # Sit on this URL until it has expired, then use it anyway: the server must refuse it (403)
            # and hand out a fresh one in a heartbeat reply.
            stale_url = job.url
            await asyncio.sleep(max(0.0, job.expires_at - time.time()) + 1.1)
        offset = 0
        failures = 0
        with self.flash_path.open("wb") as out:
            while offset < job.size:
                headers: dict[str, str] = {}
                if offset:
                    headers["Range"] = f"bytes={offset}-"
                url, stale_url = stale_url or job.url, None
                if cut_at is not None and cut_at > offset:
                    headers[CUT_HEADER.decode()] = str(cut_at - offset)
                    cut_at = None
                url, extra = self._route(url)
                headers.update(extra)
                expired = False
                try:
                    async with self.net.download_slots, self.net.downloads.stream("GET", url, headers=headers) as r:
                        if r.status_code == 403:
                            await r.aread()
                            expired = True
                        else:
                            if r.status_code not in (200, 206):
                                raise httpx.HTTPStatusError(f"status {r.status_code}", request=r.request, response=r)
                            if offset and r.status_code == 200:  # the server ignored Range: start over
                                offset = 0
                                out.seek(0)
                                out.truncate()
                            if offset:
                                self.stats.resumed += 1
                            async for chunk in r.aiter_bytes(CHUNK):
                                if corrupt_at is not None and offset <= corrupt_at < offset + len(chunk):
                                    flip = corrupt_at - offset
                                    chunk = chunk[:flip] + bytes([chunk[flip] ^ 0xFF]) + chunk[flip + 1 :]
                                    corrupt_at = None
                                out.write(chunk)
                                offset += len(chunk)
                                self.stats.bytes += len(chunk)
                                self.progress = min(100, offset * 100 // max(1, job.size))
                                if self.ota_report is not None:
                                    self.ota_report["progress"] = self.progress
                    if expired:
                        # Outside the download slot: waiting for the next heartbeat must not hold it.
                        self.stats.expired_urls += 1
                        await self._wait_for_fresh_url()
                        continue
                    if offset < job.size:
                        raise httpx.RemoteProtocolError("connection closed before the whole file arrived")
                except httpx.HTTPError as exc:
                    failures += 1
                    log.debug(
                        "%s download attempt %d failed at %d/%d: %s", self.device_id, failures, offset, job.size, exc
                    )
                    if failures > MAX_DOWNLOAD_RETRIES:  # the first attempt and 10 retries all failed
                        raise DownloadFailed("download_failed") from None
                    self.stats.retries += 1
                    backoff = min(self.timing.backoff_max_s, self.timing.backoff_base_s * 2 ** (failures - 1))
                    await asyncio.sleep(backoff * self.rng.uniform(0.5, 1.0))

    def _route(self, url: str) -> tuple[str, dict[str, str]]:
        """Send downloads through the fault proxy (keeping the original Host, which S3 signs)."""
        if self.proxies is None:
            return url, {}
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
        proxy = self.proxies.get((host, port))
        if proxy is None or parts.scheme != "http":
            return url, {}
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}")), {
            "Host": parts.netloc,
            "Connection": "close",
        }

    async def _wait_for_fresh_url(self) -> None:
        self._url_renewed.clear()
        deadline = self.interval_s * self.timing.url_wait_intervals
        try:
            await asyncio.wait_for(self._url_renewed.wait(), timeout=deadline)
        except TimeoutError:
            raise DownloadFailed("url_expired") from None

    def _verify(self, job: Job) -> str | None:
        size = 0
        crc = 0
        sha = hashlib.sha256()
        with self.flash_path.open("rb") as f:
            while chunk := f.read(CHUNK * 4):
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
                sha.update(chunk)
        # docs/device-protocol.md: any mismatch is reported as crc_mismatch; the log says which check failed.
        for check, ok in (
            ("size", size == job.size),
            ("crc32", crc & 0xFFFFFFFF == job.crc32),
            ("sha256", sha.hexdigest() == job.sha256),
        ):
            if not ok:
                log.info("%s: the downloaded image fails the %s check", self.device_id, check)
                return "crc_mismatch"
        return None


async def _sleep_or(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Sleep, but return early when ``stop`` (or ``wake``) is set."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()

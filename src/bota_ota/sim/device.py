"""One simulated Bota device: a heartbeat loop and an OTA state machine, driven only over HTTP.

    idle ──manifest──► downloading ──► verifying ──► writing ──► rebooting ──► idle (new version)
                          │               │             │            │
                          │               │             │            └─ boot loop ──► idle, old version, no report
                          └─ 10 retries ──┴─ mismatch ──┴─ power loss ──► failed report, old version
                          │               │
                          └── ota_abort ──┴──► idle, image discarded, nothing more reported

It does what docs/device-protocol.md and the update lifecycle (ota_deferred reasons, ota_abort, retried
attempts) ask of firmware: heartbeat at the interval the server returns, report progress in the ``ota``
block (a heartbeat goes out at once on entering ``writing`` and ``rebooting``), resume a broken download
with ``Range``, retry up to 10 times with backoff, wait for a fresh URL after a 403, check
size/CRC32/SHA-256 before flashing, report the new version after the reboot, never start a transfer while
recording, stop a download the server aborts, and start a fresh attempt when the server delivers an
assignment again after a failed or rolled-back attempt.

Before flashing it verifies the image as docs/device-protocol.md ("Verifying an image") asks: size, CRC32
and SHA-256 (``crc_mismatch``), then, with trusted keys, the release signature (``signature_invalid``),
then its security counter (``rollback_refused``): see :class:`bota_ota.sim.verify.DeviceTrust`.

The conditions the server's delivery policy looks at are plain attributes, sent in every heartbeat, that
a test or a fault sets and clears at run time: ``battery``/``charging`` (:meth:`SimDevice.set_battery`),
``network`` (:meth:`SimDevice.set_network`), ``storage_free_kb`` (:meth:`SimDevice.set_storage_free_kb`),
``unsynced_recordings`` (:meth:`SimDevice.set_unsynced_recordings`); :meth:`SimDevice.clear_conditions`
restores the healthy ones.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from bota_ota.sim.verify import DeviceTrust, decode_signature

log = logging.getLogger(__name__)

MAX_DOWNLOAD_RETRIES = 10
CHUNK = 64 * 1024
NETWORKS = ("wifi", "cellular")
DEFAULT_STORAGE_FREE_KB = 512 * 1024  # 512 MiB free: room for any image
LOW_BATTERY = 15  # the ``low_battery`` fault's level (below the default policy's 30 %)


@dataclass
class Timing:
    reboot_s: float = 3.0
    write_s: float = 0.5
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0
    interval_override_s: float | None = None
    url_wait_intervals: float = 5.0  # how many heartbeat intervals to wait for a fresh URL after a 403
    # On entering writing and rebooting the device heartbeats at once and waits (at most this long) until
    # the server has the report: it is how the server tells a rolled-back attempt from a stalled download.
    report_wait_s: float = 10.0


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
    deferred: int = 0  # replies with ota_deferred, whatever the reason
    deferred_by: Counter[str] = field(default_factory=Counter)  # the same, by reason
    aborted: int = 0  # downloads stopped by ota_abort
    rolled_back: int = 0  # attempts whose new image did not boot (the bootloader reverted)

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
        self.deferred_by.update(other.deferred_by)
        self.aborted += other.aborted
        self.rolled_back += other.rolled_back


@dataclass
class Job:
    assignment_id: str
    version: str
    url: str
    expires_at: float
    size: int
    crc32: int
    sha256: str
    signature: str | None = None  # base64 of the 64-byte Ed25519 signature, as the manifest carries it
    key_id: str | None = None
    security_version: int = 0

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
            signature=m.get("signature"),
            key_id=m.get("key_id"),
            security_version=int(m.get("security_version") or 0),
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
        trust: DeviceTrust | None = None,
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
        # The keys built into the firmware and the security counter; shared with the Bluetooth side.
        self.trust = trust or DeviceTrust()
        self.state = "idle"
        self.stats = DeviceStats()
        self.interval_s: float = self.timing.interval_override_s or 60.0
        self.recording_until = 0.0
        self.job: Job | None = None
        self.ota_report: dict[str, Any] | None = None
        self.progress = 0
        # The conditions the delivery policy looks at, sent in every heartbeat. A healthy device is on
        # Wi-Fi with enough battery and room, and nothing left to sync; faults and tests change that.
        self.battery = self.rng.randint(30, 100)
        self.charging = False
        self.network = "wifi"
        self.storage_free_kb: int | None = DEFAULT_STORAGE_FREE_KB
        self.unsynced_recordings: int | None = 0
        self._healthy_battery = self.battery
        # Drawn only for a fault that is set: a seed repeats the same run with or without the option.
        if self.faults.low_battery and self.rng.random() < self.faults.low_battery:
            self.battery = LOW_BATTERY
        if self.faults.cellular and self.rng.random() < self.faults.cellular:
            self.network = "cellular"
        self._wake = asyncio.Event()
        self._url_renewed = asyncio.Event()
        self._powered = asyncio.Event()
        self._powered.set()
        # Cleared while a phone is connected over Bluetooth: the device then pauses its own heartbeat.
        self._ble_free = asyncio.Event()
        self._ble_free.set()
        self._task: asyncio.Task[None] | None = None
        self.unauthorized = False
        # Assignments this device is done with (applied, or aborted by the server): a manifest for one of
        # them that was already in flight when the update ended must not start it again.
        self._finished: set[str] = set()
        # Assignments whose last attempt ended (failed, or rolled back by the bootloader) and the server
        # has not been told yet. A manifest for one of them in the reply to a heartbeat sent before the
        # server knew is stale; once it knows, a manifest for it is a new attempt (a retry).
        self._ended_untold: set[str] = set()
        # Each new ota report gets a number; the highest one a heartbeat carried to the server (a 200).
        self._report_seq = 0
        self._told_seq = 0
        self._told = asyncio.Event()
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

    def set_battery(self, level: int, *, charging: bool | None = None) -> None:
        """The battery percentage, and whether the device is on external power (unchanged if not given)."""
        if not 0 <= level <= 100:
            raise ValueError(f"battery is a percentage 0-100, got {level}")
        self.battery = level
        if charging is not None:
            self.charging = charging
        self._wake.set()

    def set_charging(self, charging: bool) -> None:
        self.charging = charging
        self._wake.set()

    def set_network(self, network: str) -> None:
        """The link the next heartbeats (and downloads) go over: ``wifi`` or ``cellular``."""
        if network not in NETWORKS:
            raise ValueError(f"network is one of {', '.join(NETWORKS)}, got {network!r}")
        self.network = network
        self._wake.set()

    def set_storage_free_kb(self, kb: int | None) -> None:
        """Free space for the image, in KiB (None: not reported, which never blocks a delivery)."""
        if kb is not None and kb < 0:
            raise ValueError(f"storage_free_kb is >= 0, got {kb}")
        self.storage_free_kb = kb
        self._wake.set()

    def set_unsynced_recordings(self, count: int | None) -> None:
        """Recordings not synced yet (None: not reported)."""
        if count is not None and count < 0:
            raise ValueError(f"unsynced_recordings is >= 0, got {count}")
        self.unsynced_recordings = count
        self._wake.set()

    def clear_conditions(self) -> None:
        """Back to a healthy device: its own battery level (not charging), Wi-Fi, room, nothing unsynced."""
        self.battery = self._healthy_battery
        self.charging = False
        self.network = "wifi"
        self.storage_free_kb = DEFAULT_STORAGE_FREE_KB
        self.unsynced_recordings = 0
        self._wake.set()

    def conditions(self) -> dict[str, Any]:
        """The delivery conditions as the next heartbeat sends them (None values are left out)."""
        values = {
            "battery": self.battery,
            "charging": self.charging,
            "network": self.network,
            "storage_free_kb": self.storage_free_kb,
            "unsynced_recordings": self.unsynced_recordings,
        }
        return {k: v for k, v in values.items() if v is not None}

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

    @property
    def security_version(self) -> int:
        return self.trust.security_version

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
            # Cleared before the heartbeat, not after: a wake-up asked for while it is in flight (a new
            # state to report) is another heartbeat at once, not one interval later.
            self._wake.clear()
            self._heartbeat_in_flight = True
            try:
                await self.heartbeat()
            finally:
                self._heartbeat_in_flight = False
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
            **self.conditions(),
            "rssi": self.rng.randint(-90, -40),
        }
        report = self.ota_report
        if report is not None:
            body["ota"] = report
        seq = self._report_seq
        ended = set(self._ended_untold)  # what this heartbeat tells the server: those attempts ended
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
        if report is not None and report.get("state") == "failed" and self.ota_report is report:
            self.ota_report = None  # the failure was delivered
        self._ended_untold -= ended
        if seq > self._told_seq:
            self._told_seq = seq
            self._told.set()
        reply: dict[str, Any] = r.json()
        await self.handle_reply(reply)
        return reply

    async def handle_reply(self, reply: dict[str, Any]) -> None:
        """Act on a heartbeat reply: the interval, ``ota_deferred``, ``ota_abort`` and a manifest."""
        if not self.timing.interval_override_s:
            self.interval_s = float(reply.get("heartbeat_interval_s") or 60)
        deferred = reply.get("ota_deferred")
        if deferred:
            # recording, battery_low, network, storage, unsynced_recordings, retry_wait: the server holds
            # the update back; nothing to do but keep heartbeating (and, for a recording, not record less).
            self.stats.deferred += 1
            self.stats.deferred_by[str(deferred)] += 1
            log.debug("%s: update deferred (%s)", self.device_id, deferred)
        abort = reply.get("ota_abort")
        if abort:
            await self.abort(str(abort))
        manifest = reply.get("ota")
        if manifest:
            self._on_manifest(manifest)

    async def abort(self, assignment_id: str) -> bool:
        """The server said ``ota_abort``: stop working on that assignment if flash writing has not begun —
        stop the download, discard the partial image, forget the job and report nothing more about it.
        Writing or rebooting, it is too late: the update finishes and the device reports what it runs.
        Returns whether the job was dropped."""
        job = self.job
        if job is None or job.assignment_id != assignment_id:
            return False  # not (or no longer) working on it: nothing to stop
        if self.state not in ("idle", "downloading", "verifying"):  # idle: the task has not started yet
            log.info("%s: ota_abort for %s while %s: finishing", self.device_id, assignment_id, self.state)
            return False
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            # Wait for it to unwind (its download stream closed, its image removed) before anything else
            # may use the flash file. asyncio.wait does not raise the task's CancelledError here.
            await asyncio.wait({task})
        self.flash_path.unlink(missing_ok=True)
        self._finished.add(assignment_id)  # never restarted by a manifest already in flight
        self.job = None
        self.ota_report = None
        self.state = "idle"
        self.progress = 0
        self.stats.aborted += 1
        log.info("%s: aborted %s as the server asked", self.device_id, assignment_id)
        return True

    def _on_manifest(self, manifest: dict[str, Any]) -> None:
        job = Job.from_manifest(manifest)
        if self.job is not None and self.job.assignment_id == job.assignment_id:
            # Same update: only take the fresher URL (never restart because a manifest arrived).
            if job.url != self.job.url:
                self.job.url, self.job.expires_at = job.url, job.expires_at
                self._url_renewed.set()
            return
        if self.state != "idle" or self.recording or self.job is not None:
            return
        if job.assignment_id in self._finished or job.assignment_id in self._ended_untold:
            # Done with it, or its last attempt ended and the server does not know yet: this manifest was
            # sent before it did. Once it knows, a manifest for the same assignment is a new attempt.
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
        self._report_seq += 1

    async def _tell_now(self) -> None:
        """Heartbeat at once with the current report, and wait until the server has it (at most
        ``Timing.report_wait_s``: with no server to tell, a real device goes on regardless)."""
        wanted = self._report_seq
        self._wake.set()
        deadline = time.monotonic() + self.timing.report_wait_s
        while self._told_seq < wanted:
            self._told.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._told.wait(), timeout=remaining)

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
            await self._tell_now()
            await asyncio.sleep(self.timing.write_s)
            if self.faults.power_loss and self.rng.random() < self.faults.power_loss:
                await self._reboot()  # power comes back; the half-written image is discarded
                self._fail("power_loss")
                return
            self._report("rebooting")
            await self._tell_now()
            if self.faults.bootloop and self.rng.random() < self.faults.bootloop:
                await self._reboot()
                self._rolled_back()
                return
            await self._reboot()
            self.firmware_version = job.version
            self.trust.applied(job.security_version)
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
            self._ended_untold.add(self.job.assignment_id)
        self._report("failed", error=error)
        self.job = None
        self.state = "idle"

    def _rolled_back(self) -> None:
        """The new image did not boot and the bootloader went back to the old one: the device runs its
        old version and knows nothing of the update (no ``ota`` block); the server sees the rollback."""
        assert self.job is not None
        log.info("%s: %s did not boot; back on %s", self.device_id, self.job.version, self.firmware_version)
        self.stats.rolled_back += 1
        self._ended_untold.add(self.job.assignment_id)
        self.ota_report = None
        self.job = None
        self.state = "idle"
        self.progress = 0

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
        """docs/device-protocol.md, "Verifying an image": None to flash, else the error to report."""
        size = 0
        crc = 0
        sha = hashlib.sha256()
        with self.flash_path.open("rb") as f:
            while chunk := f.read(CHUNK * 4):
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
                sha.update(chunk)
        digest = sha.hexdigest()
        # Any mismatch is reported as crc_mismatch; the log says which check failed.
        for check, ok in (
            ("size", size == job.size),
            ("crc32", crc & 0xFFFFFFFF == job.crc32),
            ("sha256", digest == job.sha256),
        ):
            if not ok:
                log.info("%s: the downloaded image fails the %s check", self.device_id, check)
                return "crc_mismatch"
        # The signed bytes are built from what the device knows and measured, not from the manifest's
        # checksums: its own model, the received size and SHA-256 (equal to the manifest's by now).
        error = self.trust.check(
            model=self.model,
            version=job.version,
            security_version=job.security_version,
            size=size,
            sha256=digest,
            signature=decode_signature(job.signature),
            key=job.key_id,
        )
        if error:
            log.info(
                "%s: %s refused (%s; key %s, security version %d, the device's %d)",
                self.device_id,
                job.version,
                error,
                job.key_id,
                job.security_version,
                self.trust.security_version,
            )
        return error


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

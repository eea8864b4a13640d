"""The app side of the Bota OTA profile: a transport interface, its Bumble implementation, and
``push_image``, the whole central flow of docs/ble-ota.md.

``OtaTransport`` is deliberately small so that a ``bleak`` central (real phones/PCs) can implement it
later; ``push_image`` only talks to that interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar, runtime_checkable

from bumble import gatt
from bumble.core import UUID
from bumble.device import Device
from bumble.gatt_client import CharacteristicProxy
from bumble.hci import Address

from bota_ota.sim.ble.link import DEFAULT_MTU, CentralConnection, connect_central
from bota_ota.sim.ble.profile import (
    CONTROL_POINT_UUID,
    DATA_UUID,
    DEVICE_STATE_UUID,
    OTA_SERVICE_UUID,
    STATUS_UUID,
    Opcode,
    ProfileError,
    Response,
    Result,
    Signature,
    StartParams,
    State,
    Status,
    decode_device_state,
    decode_response,
    decode_status,
    encode_abort,
    encode_chunk,
    encode_finish,
    encode_start,
    image_crc32,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

StatusListener = Callable[[Status], object]
ProgressCallback = Callable[[int, int], object]


class DeviceInfo(NamedTuple):
    model: str
    firmware_version: str
    battery: int | None  # None when the device has no Battery service
    recording: bool | None = None  # None when the device has no Device State characteristic
    serial: str | None = None  # the device's id (Serial Number String); None when the device has none


class OtaError(Exception):
    """Base of the central's errors."""


class OtaDisconnectedError(OtaError):
    """The link dropped (or was dropped on purpose with ``disconnect_at``) before the transfer ended."""

    def __init__(self, message: str = "disconnected", *, sent: int = 0, total: int = 0, intentional: bool = False):
        super().__init__(message)
        self.sent = sent
        self.total = total
        self.intentional = intentional


class OtaTimeoutError(OtaError, TimeoutError):
    """No response from the device in time."""


class OtaProtocolError(OtaError):
    """The device does not speak the profile (missing characteristic, malformed response)."""


def wrong_device_message(expected: str, actual: str | None) -> str:
    if actual is None:
        return (
            f"the connected device reports no readable serial (Serial Number String), so it cannot be confirmed to be "
            f"{expected}: nothing was relayed or sent to it"
        )
    return f"wrong device: the phone is connected to {actual}, not to {expected}: nothing was relayed or sent to it"


class OtaWrongDeviceError(OtaError):
    """The peer's serial is not the id of the device the central was asked to update (or it has none)."""

    def __init__(self, expected: str, actual: str | None) -> None:
        super().__init__(wrong_device_message(expected, actual))
        self.expected = expected
        self.actual = actual


def check_serial(info: DeviceInfo, expected: str) -> None:
    """Raise ``OtaWrongDeviceError`` unless the peer's serial is exactly ``expected``."""
    if info.serial != expected:
        raise OtaWrongDeviceError(expected, info.serial)


@runtime_checkable
class OtaTransport(Protocol):
    """One GATT central connected to one Bota device. Implementations: ``BumbleOtaTransport``
    (virtual link); a ``bleak`` one for real hardware can follow the same contract:

    - ``connect`` connects and exchanges MTU; ``subscribe`` enables Control Point and Status
      notifications (idempotent); both must be done before commands.
    - ``start``/``finish``/``abort`` write to Control Point (with response) and return the result
      notified back; ``start`` also returns ``max_chunk`` (0 when refused). With ``signed`` it sends
      SIGNED_START instead of START.
    - ``write_chunk`` writes Data without response and returns when the stack can take more (flow control).
    - Any call on a dropped link raises ``OtaDisconnectedError``; a missing response ``OtaTimeoutError``.
    """

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def read_info(self) -> DeviceInfo: ...

    async def subscribe(self) -> None: ...

    def add_status_listener(self, listener: StatusListener) -> None: ...

    def remove_status_listener(self, listener: StatusListener) -> None: ...

    async def start(
        self, size: int, crc32: int, model: str, version: str, signed: Signature | None = None
    ) -> tuple[Result, int]: ...

    async def write_chunk(self, offset: int, data: bytes) -> None: ...

    async def finish(self) -> Result: ...

    async def abort(self) -> Result: ...

    async def wait_disconnected(self, within: float) -> bool: ...

    async def disconnect(self) -> None: ...


class BumbleOtaTransport:
    """``OtaTransport`` over a Bumble central ``Device`` (e.g. ``VirtualPair.central``)."""

    def __init__(
        self,
        central: Device,
        address: Address | str,
        *,
        mtu: int | None = DEFAULT_MTU,
        connect_timeout: float = 5.0,
        response_timeout: float = 10.0,
        max_pending_packets: int | None = None,
    ) -> None:
        self.central = central
        self.address = address
        self.requested_mtu = mtu
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.max_pending_packets = max_pending_packets  # None: the controller's ACL buffer count
        self.max_chunk = 0
        self._link: CentralConnection | None = None
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._subscribed = False
        self._listeners: list[StatusListener] = []
        self._command_lock = asyncio.Lock()
        self._pending: tuple[int, asyncio.Future[Response]] | None = None
        self._control_point: CharacteristicProxy[bytes] | None = None
        self._data: CharacteristicProxy[bytes] | None = None
        self._status: CharacteristicProxy[bytes] | None = None
        self.last_status: Status | None = None

    # --- connection ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._disconnected.is_set()

    @property
    def mtu(self) -> int:
        """The negotiated ATT MTU of the current (or last) connection."""
        if self._link is None:
            raise OtaError("never connected")
        return self._link.mtu

    @property
    def link(self) -> CentralConnection:
        if self._link is None:
            raise OtaError("not connected")
        return self._link

    async def connect(self) -> None:
        if self.connected:
            return
        try:
            link = await connect_central(
                self.central, self.address, mtu=self.requested_mtu, connect_timeout=self.connect_timeout
            )
        except TimeoutError as exc:
            raise OtaTimeoutError(f"no connectable device at {self.address}") from exc
        self._link = link
        self._disconnected = asyncio.Event()
        self._subscribed = False
        self.max_chunk = 0
        link.connection.on(link.connection.EVENT_DISCONNECTION, self._on_disconnection)
        peer = link.peer
        await self._guard(peer.discover_services())
        for service in peer.services:
            await self._guard(service.discover_characteristics())
        self._control_point = self._find(CONTROL_POINT_UUID, OTA_SERVICE_UUID)
        self._data = self._find(DATA_UUID, OTA_SERVICE_UUID)
        self._status = self._find(STATUS_UUID, OTA_SERVICE_UUID)

    def _find(self, uuid: str | UUID, service: str | UUID) -> CharacteristicProxy[bytes]:
        found = self._find_optional(uuid, service)
        if found is None:
            raise OtaProtocolError(f"characteristic {uuid} not found: not a Bota OTA device?")
        return found

    def _find_optional(self, uuid: str | UUID, service: str | UUID) -> CharacteristicProxy[bytes] | None:
        u = uuid if isinstance(uuid, UUID) else UUID(uuid)
        s = service if isinstance(service, UUID) else UUID(service)
        found = self.link.peer.get_characteristics_by_uuid(u, s)
        return found[0] if found else None

    def _on_disconnection(self, reason: int) -> None:
        logger.debug("disconnected from %s (reason %s)", self.address, reason)
        self._disconnected.set()  # wakes every _guard() in flight: they raise OtaDisconnectedError

    async def wait_disconnected(self, within: float) -> bool:
        """True once the link is down; False if it is still up after ``within`` seconds."""
        try:
            await asyncio.wait_for(self._disconnected.wait(), within)
        except TimeoutError:
            return False
        return True

    async def disconnect(self) -> None:
        """Drop the link. Data already handed to the stack is flushed to the device first."""
        if not self.connected:
            return
        connection = self.link.connection
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(connection.drain(), 2.0)
        try:
            await connection.disconnect()
        except Exception:
            logger.debug("disconnect failed (already gone?)", exc_info=True)
        self._disconnected.set()

    async def _guard(self, awaitable: Awaitable[_T], limit: float | None = None) -> _T:
        """Await ``awaitable`` unless the link drops (OtaDisconnectedError) or time runs out."""
        if not self.connected:
            raise OtaDisconnectedError()
        task = asyncio.ensure_future(awaitable)
        watcher = asyncio.ensure_future(self._disconnected.wait())
        try:
            done, _ = await asyncio.wait({task, watcher}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if task in done:
            if task.cancelled():
                # Bumble cancels a pending ATT request when the link goes down under it.
                raise OtaDisconnectedError()
            return task.result()
        task.cancel()
        if watcher in done:
            raise OtaDisconnectedError()
        raise OtaTimeoutError("no response from the device")

    # --- reads and notifications --------------------------------------------------------------------

    async def read_info(self) -> DeviceInfo:
        """Read the Serial Number first (what the central checks before anything else), then the rest."""
        peer = self.link.peer
        serial_value: bytes | None = None
        information = gatt.GATT_DEVICE_INFORMATION_SERVICE
        serial = self._find_optional(gatt.GATT_SERIAL_NUMBER_STRING_CHARACTERISTIC, information)
        if serial is not None:
            serial_value = bytes(await self._guard(peer.read_value(serial), self.response_timeout))
        model = self._find(gatt.GATT_MODEL_NUMBER_STRING_CHARACTERISTIC, gatt.GATT_DEVICE_INFORMATION_SERVICE)
        firmware = self._find(gatt.GATT_FIRMWARE_REVISION_STRING_CHARACTERISTIC, gatt.GATT_DEVICE_INFORMATION_SERVICE)
        battery = self._find_optional(gatt.GATT_BATTERY_LEVEL_CHARACTERISTIC, gatt.GATT_BATTERY_SERVICE)
        model_value = await self._guard(peer.read_value(model), self.response_timeout)
        firmware_value = await self._guard(peer.read_value(firmware), self.response_timeout)
        battery_level: int | None = None
        if battery is not None:
            battery_value = await self._guard(peer.read_value(battery), self.response_timeout)
            battery_level = battery_value[0] if battery_value else None
        recording: bool | None = None
        device_state = self._find_optional(DEVICE_STATE_UUID, OTA_SERVICE_UUID)
        if device_state is not None:
            state_value = await self._guard(peer.read_value(device_state), self.response_timeout)
            try:
                recording = decode_device_state(bytes(state_value))
            except ProfileError:
                logger.warning("malformed Device State %s", bytes(state_value).hex())
        return DeviceInfo(
            model=bytes(model_value).decode("utf-8"),
            firmware_version=bytes(firmware_value).decode("utf-8"),
            battery=battery_level,
            recording=recording,
            serial=_decode_utf8(serial_value),
        )

    async def read_status(self) -> Status:
        assert self._status is not None
        return decode_status(bytes(await self._guard(self.link.peer.read_value(self._status), self.response_timeout)))

    async def subscribe(self) -> None:
        if self._subscribed:
            return
        assert self._control_point is not None and self._status is not None
        peer = self.link.peer
        await self._guard(peer.subscribe(self._control_point, self._on_control_point), self.response_timeout)
        await self._guard(peer.subscribe(self._status, self._on_status), self.response_timeout)
        self._subscribed = True

    def add_status_listener(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def remove_status_listener(self, listener: StatusListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _on_status(self, value: bytes) -> None:
        try:
            status = decode_status(bytes(value))
        except ProfileError:
            logger.warning("malformed Status notification %s", bytes(value).hex())
            return
        self.last_status = status
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                logger.exception("status listener failed")

    def _on_control_point(self, value: bytes) -> None:
        try:
            response = decode_response(bytes(value))
        except ProfileError:
            logger.warning("malformed Control Point notification %s", bytes(value).hex())
            return
        pending = self._pending
        if pending is None or pending[0] != response.request_opcode or pending[1].done():
            logger.warning("unexpected Control Point response %s", response)
            return
        pending[1].set_result(response)

    # --- commands -----------------------------------------------------------------------------------

    async def _command(self, opcode: Opcode, payload: bytes) -> Response:
        if not self._subscribed:
            await self.subscribe()
        assert self._control_point is not None
        async with self._command_lock:
            future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            self._pending = (opcode, future)
            try:
                await self._guard(
                    self.link.peer.write_value(self._control_point, payload, with_response=True),
                    self.response_timeout,
                )
                return await self._guard(future, self.response_timeout)
            finally:
                self._pending = None

    async def start(
        self, size: int, crc32: int, model: str, version: str, signed: Signature | None = None
    ) -> tuple[Result, int]:
        params = StartParams(size=size, crc32=crc32, model=model, version=version, signed=signed)
        # Longer than MTU - 3 (a SIGNED_START always is at the default MTU 23), Bumble writes it with the
        # Write Long procedure (Prepare Write + Execute Write), as phone stacks do.
        response = await self._command(params.opcode, encode_start(params))
        self.max_chunk = response.max_chunk or 0
        return response.result, self.max_chunk

    async def finish(self) -> Result:
        return (await self._command(Opcode.FINISH, encode_finish())).result

    async def abort(self) -> Result:
        return (await self._command(Opcode.ABORT, encode_abort())).result

    async def write_chunk(self, offset: int, data: bytes) -> None:
        """Write one Data chunk (without response), then wait while too much is queued in the host."""
        if not self.connected:
            raise OtaDisconnectedError()
        assert self._data is not None
        link = self.link
        await link.peer.write_value(self._data, encode_chunk(offset, data), with_response=False)
        queue = link.connection.data_packet_queue
        if queue is None:
            await asyncio.sleep(0)
            return
        limit = self.max_pending_packets or queue.max_in_flight
        # Bumble's Write Command returns at once (its ACL queue is unbounded): wait for the controller to
        # complete packets before queueing more, so the central never runs far ahead of the link.
        while queue.pending >= limit:
            if not self.connected:
                raise OtaDisconnectedError()
            await link.connection.drain()
            await asyncio.sleep(0)


def _decode_utf8(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        logger.warning("Serial Number String is not UTF-8: %s", value.hex())
        return None


if TYPE_CHECKING:

    def _conforms(transport: BumbleOtaTransport) -> OtaTransport:
        return transport  # mypy checks BumbleOtaTransport against the protocol here


# --- the central flow ----------------------------------------------------------------------------------


@dataclass
class PushReport:
    """What ``push_image`` did. ``result`` is the device's answer: START's when refused, a Data failure's
    (from the FAILED Status) when the device aborted, otherwise FINISH's."""

    result: Result
    info: DeviceInfo | None
    total: int
    sent: int = 0
    max_chunk: int = 0
    elapsed: float = 0.0  # seconds from START to the FINISH response
    device_disconnected: bool = False  # after FINISH SUCCESS the device dropped the link to reboot
    statuses: list[Status] = field(default_factory=list)
    signed: bool = False  # the transfer began with SIGNED_START (False: START, unsigned or fallen back)

    @property
    def ok(self) -> bool:
        return self.result is Result.SUCCESS

    @property
    def bytes_per_second(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


async def push_image(
    transport: OtaTransport,
    image: bytes,
    *,
    model: str,
    version: str,
    serial: str | None = None,
    crc32: int | None = None,
    rate_kbps: float | None = None,
    on_progress: ProgressCallback | None = None,
    disconnect_at: float | None = None,
    reboot_disconnect_timeout: float = 5.0,
    signed: Signature | None = None,
) -> PushReport:
    """Push ``image`` to the device behind ``transport`` and return the outcome.

    Connects if needed, reads the device info (and, given ``serial``, raises ``OtaWrongDeviceError`` before
    anything is written when the peer's Serial Number String is not exactly that), subscribes, STARTs
    (``crc32`` defaults to the image's), writes chunks of ``max_chunk`` in order, FINISHes. ``rate_kbps``
    paces the payload to that many kilobits (1000 bits) per second; None sends as fast as the link's flow
    control allows.
    ``on_progress(sent, total)`` runs after each chunk. After FINISH SUCCESS it waits up to
    ``reboot_disconnect_timeout`` for the device to drop the link (to reboot).

    ``disconnect_at`` (0..1) drops the link once that fraction of the image was sent and raises
    ``OtaDisconnectedError(intentional=True)``; an unexpected drop raises it with ``intentional=False``.
    Both carry ``sent``/``total``.

    ``signed`` (the release's signature, key id and security version) sends SIGNED_START. A device that
    predates it answers INVALID_PARAMETER; the transfer then begins with a plain START (such a device
    verifies no signatures, so nothing is lost).
    """
    if disconnect_at is not None and not 0.0 <= disconnect_at <= 1.0:
        raise ValueError("disconnect_at must be within 0..1")
    if rate_kbps is not None and rate_kbps <= 0:
        raise ValueError("rate_kbps must be positive")
    total = len(image)
    crc = image_crc32(image) if crc32 is None else crc32
    statuses: list[Status] = []
    failure: list[Status] = []

    def on_status(status: Status) -> None:
        statuses.append(status)
        if status.state is State.FAILED:
            failure.append(status)

    sent = 0
    transport.add_status_listener(on_status)
    try:
        if not transport.connected:
            await transport.connect()
        info = await transport.read_info()
        if serial is not None:
            check_serial(info, serial)
        await transport.subscribe()
        started = time.monotonic()
        result, max_chunk = await transport.start(total, crc, model, version, signed)
        if signed is not None and result is Result.INVALID_PARAMETER:
            logger.info("the device does not know SIGNED_START: sending START; it verifies no signatures")
            result, max_chunk = await transport.start(total, crc, model, version)
            signed = None
        report = PushReport(
            result=result, info=info, total=total, max_chunk=max_chunk, statuses=statuses, signed=signed is not None
        )
        if result is not Result.SUCCESS:
            return report
        if max_chunk <= 0:
            raise OtaProtocolError(f"START succeeded with max_chunk={max_chunk}")

        bytes_per_second = rate_kbps * 1000 / 8 if rate_kbps is not None else None
        drop_after = None if disconnect_at is None else disconnect_at * total
        view = memoryview(image)
        sending_started = time.monotonic()
        while True:
            if drop_after is not None and sent >= drop_after:
                await transport.disconnect()
                raise OtaDisconnectedError(
                    f"disconnected on purpose after {sent}/{total} bytes", sent=sent, total=total, intentional=True
                )
            if failure:
                report.result, report.sent = failure[0].last_result, sent
                report.elapsed = time.monotonic() - started
                return report
            if sent >= total:
                break
            chunk = bytes(view[sent : sent + max_chunk])
            await transport.write_chunk(sent, chunk)
            sent += len(chunk)
            if on_progress is not None:
                on_progress(sent, total)
            if bytes_per_second is not None:
                delay = sending_started + sent / bytes_per_second - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

        report.sent = sent
        report.result = await transport.finish()
        report.elapsed = time.monotonic() - started
        if report.result is Result.INVALID_STATE and failure:
            # The device had already failed the transfer on a Data write (its FAILED Status crossed our
            # FINISH): report that cause rather than FINISH's consequence.
            report.result = failure[0].last_result
        if report.result is Result.SUCCESS:
            report.device_disconnected = await transport.wait_disconnected(reboot_disconnect_timeout)
        return report
    except OtaDisconnectedError as exc:
        if exc.intentional:
            raise
        raise OtaDisconnectedError(
            f"link dropped after {sent}/{total} bytes", sent=sent, total=total, intentional=False
        ) from exc
    finally:
        transport.remove_status_listener(on_status)

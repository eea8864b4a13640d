"""The device side of the Bota OTA profile: a GATT peripheral on a Bumble Device.

``OtaPeripheral`` serves Device Information (Model Number, Serial Number, Firmware Revision), Battery and
the Bota OTA service (with Device State, so the app can relay whether the device is recording), and runs
the transfer exactly as docs/ble-ota.md says, verifying a signed image as docs/device-protocol.md asks
(``DeviceState.trust``: its trusted keys and security counter). A simulated device plugs in through
``DeviceState`` (what the device is) and three hooks: ``on_connected()``, ``on_disconnected()`` and
``on_applied(version)`` (after the reboot). Hooks may be plain functions or coroutine functions.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bumble import data_types, gatt
from bumble.att import ATT_Error, ErrorCode
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.hci import Role

from bota_ota.sim.ble.profile import (
    CONTROL_POINT_UUID,
    DATA_UUID,
    DEVICE_STATE_UUID,
    LOW_BATTERY_THRESHOLD,
    MAX_PROFILE_MTU,
    OTA_SERVICE_UUID,
    STATUS_UUID,
    Opcode,
    ProfileError,
    Response,
    Result,
    StartParams,
    State,
    Status,
    decode_chunk,
    decode_command,
    encode_device_state,
    encode_response,
    encode_status,
    image_crc32,
    max_chunk_for_mtu,
)
from bota_ota.sim.verify import ROLLBACK_REFUSED, DeviceTrust

logger = logging.getLogger(__name__)

Hook = Callable[..., object]
"""A callback; if it returns an awaitable, the peripheral runs it as a task."""

DEFAULT_MAX_IMAGE_SIZE = 2 * 1024 * 1024


def _refuse_write(_connection: Connection, _value: bytes) -> None:
    raise ATT_Error(ErrorCode.WRITE_NOT_PERMITTED)


def _read_only(read: Callable[[Connection], bytes]) -> gatt.CharacteristicValue[bytes]:
    """The value of a read-only characteristic. Bumble's GATT server does not check permissions: it would
    store a write into a plain value (a central could overwrite the serial) and leave a write to a value
    without a write function unanswered. So writes are refused here, with WRITE_NOT_PERMITTED."""
    return gatt.CharacteristicValue(read=read, write=_refuse_write)


@dataclass
class DeviceState:
    """What the simulated device is. The peripheral reads it on every request and, after applying an
    update, writes ``firmware_version``. ``battery`` and ``recording`` may be callables so a simulator
    can keep them live."""

    model: str
    firmware_version: str
    serial: str = field(kw_only=True)
    """The device's id on the server (e.g. ``BP-000123``), served as the Serial Number String so that the app
    can check it is connected to the device it was asked to update."""
    battery: int | Callable[[], int] = 100
    recording: bool | Callable[[], bool] = False
    max_image_size: int = DEFAULT_MAX_IMAGE_SIZE
    busy: bool | Callable[[], bool] = False
    """True while the device cannot take a Bluetooth transfer for another reason (e.g. it is updating over
    HTTP): START is then answered INVALID_STATE."""
    trust: DeviceTrust = field(default_factory=DeviceTrust)
    """The public keys built into the firmware and the security counter (shared with the HTTP side of a
    simulated device). No keys: unsigned images are accepted (development only)."""

    def battery_level(self) -> int:
        level = self.battery() if callable(self.battery) else self.battery
        return max(0, min(100, int(level)))

    def is_recording(self) -> bool:
        return bool(self.recording() if callable(self.recording) else self.recording)

    def is_busy(self) -> bool:
        return bool(self.busy() if callable(self.busy) else self.busy)


@dataclass
class PeripheralCounters:
    """Observable effects, for tests and simulators."""

    connections: int = 0
    start_requests: int = 0
    starts_accepted: int = 0
    flash_erases: int = 0  # the update slot is erased on each accepted START, and only then
    flash_bytes_written: int = 0  # bytes written to the update slot, over all attempts
    chunks_received: int = 0
    chunks_ignored: int = 0  # Data writes outside RECEIVING (dropped, nothing written)
    first_data_offsets: list[int] = field(default_factory=list)  # first Data offset of each accepted START
    responses: list[Response] = field(default_factory=list)  # every Control Point response, in order
    last_result: Result | None = None  # last command (or Data failure) result
    reboots: int = 0
    applied_versions: list[str] = field(default_factory=list)


class OtaPeripheral:
    """Bota OTA GATT server on ``device`` (a powered-on Bumble Device).

    Call ``await start()`` to begin advertising. ``reboot_delay`` is how long the simulated reboot takes
    after the update was verified; ``verify_delay`` stretches VERIFYING (to test disconnects there).
    """

    def __init__(
        self,
        device: Device,
        state: DeviceState,
        *,
        reboot_delay: float = 0.2,
        verify_delay: float = 0.0,
        advertising_interval_ms: float = 20.0,
        on_connected: Hook | None = None,
        on_disconnected: Hook | None = None,
        on_applied: Hook | None = None,
    ) -> None:
        self.device = device
        self.state = state
        self.reboot_delay = reboot_delay
        self.verify_delay = verify_delay
        self.advertising_interval_ms = advertising_interval_ms
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.on_applied = on_applied
        self.counters = PeripheralCounters()

        # Transfer state
        self._state = State.IDLE
        self._last_result = Result.SUCCESS
        self._progress = 0
        self._slot = bytearray()  # the update slot ("flash"); never exceeds the START size
        self._params: StartParams | None = None
        self._transfer_connection: Connection | None = None
        self._generation = 0  # bumped whenever a transfer begins or is discarded
        self._awaiting_first_chunk = False
        self._pending: tuple[str, int] | None = None  # verified image's version and security version, for the reboot

        self._connection: Connection | None = None
        self._started = False
        self._rebooting = False
        self._ready = asyncio.Event()
        self._notifications: asyncio.Queue[tuple[Connection, gatt.Characteristic[bytes], bytes]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._advertising_tasks: set[asyncio.Task[Any]] = set()  # HCI work: awaited, never cancelled

        # MTU above 515 would make max_chunk = MTU - 7 exceed what one attribute write can carry.
        device.gatt_server.max_mtu = min(device.gatt_server.max_mtu, MAX_PROFILE_MTU)
        self._build_services()
        device.on(Device.EVENT_CONNECTION, self._on_connection)

    # --- GATT database -------------------------------------------------------------------------------

    def _build_services(self) -> None:
        props = gatt.Characteristic.Properties
        readable = gatt.Characteristic.Permissions.READABLE
        writeable = gatt.Characteristic.Permissions.WRITEABLE

        self.model_characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            gatt.GATT_MODEL_NUMBER_STRING_CHARACTERISTIC,
            props.READ,
            readable,
            _read_only(lambda _c: self.state.model.encode("utf-8")),
        )
        self.serial_characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            gatt.GATT_SERIAL_NUMBER_STRING_CHARACTERISTIC,
            props.READ,
            readable,
            _read_only(lambda _c: self.state.serial.encode("utf-8")),
        )
        self.firmware_characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            gatt.GATT_FIRMWARE_REVISION_STRING_CHARACTERISTIC,
            props.READ,
            readable,
            _read_only(lambda _c: self.state.firmware_version.encode("utf-8")),
        )
        self.battery_characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            gatt.GATT_BATTERY_LEVEL_CHARACTERISTIC,
            props.READ | props.NOTIFY,
            readable,
            _read_only(lambda _c: bytes([self.state.battery_level()])),
        )
        self.control_point_characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            CONTROL_POINT_UUID,
            props.WRITE | props.NOTIFY,
            writeable,
            gatt.CharacteristicValue(write=self._on_control_point_write),
        )
        self.data_characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            DATA_UUID,
            props.WRITE_WITHOUT_RESPONSE,
            writeable,
            gatt.CharacteristicValue(write=self._on_data_write),
        )
        self.status_characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            STATUS_UUID,
            props.READ | props.NOTIFY,
            readable,
            _read_only(lambda _c: encode_status(self.status)),
        )
        self.device_state_characteristic: gatt.Characteristic[bytes] = gatt.Characteristic(
            DEVICE_STATE_UUID,
            props.READ,
            readable,
            _read_only(lambda _c: encode_device_state(recording=self.state.is_recording())),
        )
        self.device.add_services(
            [
                # Built here rather than with bumble.profiles.device_information_service, whose values are
                # fixed at construction: the Firmware Revision changes when an update is applied.
                gatt.Service(
                    gatt.GATT_DEVICE_INFORMATION_SERVICE,
                    [self.model_characteristic, self.serial_characteristic, self.firmware_characteristic],
                ),
                gatt.Service(gatt.GATT_BATTERY_SERVICE, [self.battery_characteristic]),
                gatt.Service(
                    OTA_SERVICE_UUID,
                    [
                        self.control_point_characteristic,
                        self.data_characteristic,
                        self.status_characteristic,
                        self.device_state_characteristic,
                    ],
                ),
            ]
        )

    # --- public API ---------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return str(self.device.random_address)

    @property
    def transfer_state(self) -> State:
        return self._state

    @property
    def status(self) -> Status:
        return Status(self._state, self._progress, len(self._slot), self._last_result)

    @property
    def received(self) -> int:
        return len(self._slot)

    @property
    def connected(self) -> bool:
        return self._connection is not None

    @property
    def connection(self) -> Connection | None:
        return self._connection

    @property
    def rebooting(self) -> bool:
        return self._rebooting

    async def start(self) -> None:
        """Start serving: spawn the notifier and begin advertising (connectable)."""
        if self._started:
            return
        self._started = True
        self._spawn(self._notification_pump())
        await self._advertise()
        self._ready.set()

    async def stop(self) -> None:
        """Stop advertising and background work (connections are left to the caller). Call it before
        the loop ends: cancelling Bumble in the middle of an HCI command leaves it confused."""
        self._started = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._advertising_tasks, return_exceptions=True)
        if self.device.is_advertising:
            await self.device.stop_advertising()

    async def wait_ready(self, within: float = 5.0) -> None:
        """Wait until the device is up and advertising (e.g. after an update's reboot); TimeoutError after
        ``within`` seconds."""
        await asyncio.wait_for(self._ready.wait(), within)

    def set_battery(self, level: int) -> None:
        """Set the battery level (replacing a callable ``DeviceState.battery``) and notify Battery Level
        subscribers."""
        self.state.battery = level
        if self._connection is not None:
            self._enqueue(self._connection, self.battery_characteristic, bytes([self.state.battery_level()]))

    # --- connections --------------------------------------------------------------------------------

    def _on_connection(self, connection: Connection) -> None:
        if connection.role != Role.PERIPHERAL:
            return
        self._connection = connection
        self.counters.connections += 1
        connection.on(Connection.EVENT_DISCONNECTION, lambda reason: self._on_disconnection(connection, reason))
        self._fire(self.on_connected)

    def _on_disconnection(self, connection: Connection, reason: int) -> None:
        logger.debug("central disconnected (reason %s) in state %s", reason, self._state.name)
        if self._connection is connection:
            self._connection = None
        if self._transfer_connection is connection:
            if self._state is State.APPLYING:
                self._begin_reboot()
            elif self._state in (State.RECEIVING, State.VERIFYING, State.FAILED):
                # No partial resume: what was received is gone, the next START begins at offset 0.
                self._discard()
                self._state = State.IDLE
            self._transfer_connection = None
        self._fire(self.on_disconnected)
        if self._started and not self._rebooting:
            self._advertise()

    def _advertise(self) -> asyncio.Task[None]:
        """Start advertising in a tracked task (awaitable; ``stop()`` waits for it rather than cancel)."""
        task = asyncio.ensure_future(self._start_advertising())
        self._advertising_tasks.add(task)
        task.add_done_callback(self._advertising_done)
        return task

    def _advertising_done(self, task: asyncio.Task[None]) -> None:
        self._advertising_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("advertising failed", exc_info=task.exception())

    async def _start_advertising(self) -> None:
        if not self._started or self.device.is_advertising:
            return
        advertising_data = bytes(
            AdvertisingData(
                [
                    data_types.Flags(
                        AdvertisingData.Flags.LE_GENERAL_DISCOVERABLE_MODE | AdvertisingData.Flags.BR_EDR_NOT_SUPPORTED
                    ),
                    data_types.CompleteListOf128BitServiceUUIDs([UUID(OTA_SERVICE_UUID)]),
                ]
            )
        )
        scan_response = bytes(AdvertisingData([data_types.CompleteLocalName(self.device.name)]))
        await self.device.start_advertising(
            advertising_data=advertising_data,
            scan_response_data=scan_response,
            advertising_interval_min=self.advertising_interval_ms,
            advertising_interval_max=self.advertising_interval_ms,
        )

    # --- notifications ------------------------------------------------------------------------------

    def _enqueue(self, connection: Connection, characteristic: gatt.Characteristic[bytes], value: bytes) -> None:
        self._notifications.put_nowait((connection, characteristic, value))

    async def _notification_pump(self) -> None:
        """Send notifications one at a time, in the order they were produced."""
        while True:
            connection, characteristic, value = await self._notifications.get()
            try:
                if self._is_live(connection):
                    await self.device.notify_subscriber(connection, characteristic, value)
            except Exception:
                logger.exception("notification failed")
            finally:
                self._notifications.task_done()

    def _respond(self, connection: Connection, response: Response) -> None:
        self.counters.responses.append(response)
        self.counters.last_result = response.result
        self._enqueue(connection, self.control_point_characteristic, encode_response(response))

    def _notify_status(self) -> None:
        connection = self._transfer_connection or self._connection
        if connection is not None:
            self._enqueue(connection, self.status_characteristic, encode_status(self.status))

    def _set_state(self, state: State) -> None:
        if state is not self._state:
            self._state = state
            self._notify_status()

    # --- Control Point ------------------------------------------------------------------------------

    def _on_control_point_write(self, connection: Connection, value: bytes) -> None:
        try:
            command = decode_command(bytes(value))
        except ProfileError as exc:
            logger.debug("malformed command %s: %s", bytes(value).hex(), exc)
            opcode = value[0] if value else 0
            self._last_result = Result.INVALID_PARAMETER
            self._respond(connection, Response(opcode, Result.INVALID_PARAMETER))
            return
        if command.start is not None:  # START or SIGNED_START
            self._on_start(connection, command.start)
        elif command.opcode is Opcode.ABORT:
            self._on_abort(connection)
        else:
            self._on_finish(connection)

    def _check_start(self, params: StartParams) -> Result:
        if self._rebooting or self._state in (State.RECEIVING, State.VERIFYING, State.APPLYING):
            return Result.INVALID_STATE
        if self.state.is_busy():
            return Result.INVALID_STATE
        if params.size == 0:
            return Result.INVALID_PARAMETER
        if self.state.is_recording():
            return Result.RECORDING
        if self.state.battery_level() < LOW_BATTERY_THRESHOLD:
            return Result.LOW_BATTERY
        if params.model != self.state.model:
            return Result.WRONG_MODEL
        if params.version == self.state.firmware_version:
            return Result.SAME_VERSION
        if params.size > self.state.max_image_size:
            return Result.TOO_LARGE
        # What can be checked before a byte is sent: a signature is needed and its key is trusted; the
        # image is not older, security-wise, than what runs. FINISH checks the signature itself.
        trust = self.state.trust
        if trust.requires_signature and (params.signed is None or not trust.knows(params.signed.key_id.hex())):
            return Result.SIGNATURE_INVALID
        if params.security_version < trust.security_version:
            return Result.ROLLBACK_REFUSED
        return Result.SUCCESS

    def _on_start(self, connection: Connection, params: StartParams) -> None:
        self.counters.start_requests += 1
        result = self._check_start(params)
        if result is not Result.SUCCESS:
            # Refused: nothing is erased or written, the state is unchanged.
            self._last_result = result
            self._respond(connection, Response(params.opcode, result))
            return
        self._discard()  # erase the update slot
        self.counters.flash_erases += 1
        self.counters.starts_accepted += 1
        self._params = params
        self._transfer_connection = connection
        self._last_result = Result.SUCCESS
        max_chunk = max_chunk_for_mtu(connection.att_mtu)
        self._awaiting_first_chunk = True
        self._respond(connection, Response(params.opcode, Result.SUCCESS, max_chunk))
        self._set_state(State.RECEIVING)

    def _on_abort(self, connection: Connection) -> None:
        if self._state is State.APPLYING or self._rebooting:
            self._respond(connection, Response(Opcode.ABORT, Result.INVALID_STATE))
            return
        self._discard()
        self._last_result = Result.SUCCESS
        self._transfer_connection = None
        self._respond(connection, Response(Opcode.ABORT, Result.SUCCESS))
        self._set_state(State.IDLE)

    def _on_finish(self, connection: Connection) -> None:
        params = self._params
        if self._state is not State.RECEIVING or params is None or connection is not self._transfer_connection:
            self._respond(connection, Response(Opcode.FINISH, Result.INVALID_STATE))
            return
        if len(self._slot) != params.size:
            self._fail(Result.SIZE_MISMATCH)
            self._respond(connection, Response(Opcode.FINISH, Result.SIZE_MISMATCH))
            self._notify_status()
            return
        self._set_state(State.VERIFYING)
        self._spawn(self._verify(connection, params, self._generation))

    async def _verify(self, connection: Connection, params: StartParams, generation: int) -> None:
        if self.verify_delay > 0:
            await asyncio.sleep(self.verify_delay)
        else:
            await asyncio.sleep(0)
        if generation != self._generation or self._state is not State.VERIFYING:
            return  # discarded meanwhile (disconnect or ABORT)
        result = self._check_image(params)
        if result is not Result.SUCCESS:
            self._fail(result)  # keeps the running firmware; nothing is applied
            self._respond(connection, Response(Opcode.FINISH, result))
            self._notify_status()
            return
        self._last_result = Result.SUCCESS
        self._pending = (params.version, params.security_version)
        self._respond(connection, Response(Opcode.FINISH, Result.SUCCESS))
        self._set_state(State.APPLYING)
        await self._disconnect_for_reboot(connection)

    def _check_image(self, params: StartParams) -> Result:
        """docs/device-protocol.md, "Verifying an image", on the received bytes: CRC32 (the size was checked
        by FINISH), then the signature over this device's model, START's version and security version, the
        received size and SHA-256, then the security counter."""
        if image_crc32(self._slot) != params.crc32:
            return Result.CRC_MISMATCH
        signed = params.signed
        error = self.state.trust.check(
            model=self.state.model,
            version=params.version,
            security_version=params.security_version,
            size=len(self._slot),
            sha256=hashlib.sha256(self._slot).hexdigest(),
            signature=signed.signature if signed else None,
            key=signed.key_id.hex() if signed else None,
        )
        if error is None:
            return Result.SUCCESS
        return Result.ROLLBACK_REFUSED if error == ROLLBACK_REFUSED else Result.SIGNATURE_INVALID

    async def _disconnect_for_reboot(self, connection: Connection) -> None:
        # Let the response and the APPLYING status reach the central before dropping the link.
        await self._notifications.join()
        if self._is_live(connection):
            await connection.drain()
            try:
                await connection.disconnect()
            except Exception:
                logger.debug("disconnect for reboot failed (already gone?)", exc_info=True)
        if self._state is State.APPLYING and not self._rebooting:
            self._begin_reboot()

    def _begin_reboot(self) -> None:
        if self._rebooting or self._pending is None:
            return
        self._rebooting = True
        self._ready.clear()
        (version, security_version), self._pending = self._pending, None
        self._spawn(self._reboot(version, security_version))

    async def _reboot(self, version: str, security_version: int) -> None:
        await asyncio.sleep(self.reboot_delay)
        # The bootloader applied the image: the device comes back running it, its counter raised.
        self.state.firmware_version = version
        self.state.trust.applied(security_version)
        self._discard()
        self._state = State.IDLE
        self._last_result = Result.SUCCESS
        self._transfer_connection = None
        self.counters.reboots += 1
        self.counters.applied_versions.append(version)
        self._rebooting = False
        self._fire(self.on_applied, version)
        if self._started:
            await asyncio.shield(self._advertise())
        self._ready.set()

    # --- Data ---------------------------------------------------------------------------------------

    def _on_data_write(self, connection: Connection, value: bytes) -> None:
        # Synchronous on purpose: Bumble runs each Write Command in its own task, and a handler that never
        # awaits keeps the chunks in arrival order.
        params = self._params
        if self._state is not State.RECEIVING or params is None or connection is not self._transfer_connection:
            self.counters.chunks_ignored += 1
            return
        try:
            offset, payload = decode_chunk(bytes(value))
        except ProfileError:
            self._fail(Result.INVALID_PARAMETER)
            self._notify_status()
            return
        self.counters.chunks_received += 1
        if self._awaiting_first_chunk:
            self._awaiting_first_chunk = False
            self.counters.first_data_offsets.append(offset)
        if offset != len(self._slot):
            # Out of order: the transfer is over, no partial resume.
            self._fail(Result.INVALID_PARAMETER)
            self._notify_status()
            return
        if offset + len(payload) > params.size:
            self._fail(Result.SIZE_MISMATCH)
            self._notify_status()
            return
        self._slot += payload
        self.counters.flash_bytes_written += len(payload)
        progress = len(self._slot) * 100 // params.size
        if progress != self._progress:
            self._progress = progress
            self._notify_status()

    # --- helpers ------------------------------------------------------------------------------------

    def _is_live(self, connection: Connection) -> bool:
        return self.device.connections.get(connection.handle) is connection

    def _discard(self) -> None:
        self._slot = bytearray()
        self._params = None
        self._progress = 0
        self._awaiting_first_chunk = False
        self._generation += 1

    def _fail(self, result: Result) -> None:
        """End the transfer in FAILED with ``result``; what was received is discarded."""
        self._discard()
        self._last_result = result
        self.counters.last_result = result
        self._state = State.FAILED

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("peripheral task failed", exc_info=task.exception())

    def _fire(self, hook: Hook | None, *args: object) -> None:
        if hook is None:
            return
        try:
            result = hook(*args)
        except Exception:
            logger.exception("hook %r failed", hook)
            return
        if inspect.isawaitable(result):
            self._spawn(result)

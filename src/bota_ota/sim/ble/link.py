"""Bumble devices on in-process virtual controllers, joined by one shared ``LocalLink``.

Each Device gets its own ``bumble.controller.Controller`` (a software LE controller) and a real
``bumble.host.Host``: everything above HCI - L2CAP, ATT with MTU exchange, GATT, HCI flow control -
is Bumble's real stack. Must be used from inside a running asyncio loop (Bumble's controllers bind to it).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

from bumble import core, hci
from bumble.controller import Controller
from bumble.device import Connection, Device, Peer
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from bota_ota.sim.ble.profile import DEFAULT_ATT_MTU

DEFAULT_PERIPHERAL_ADDRESS: Final = "C0:B0:7A:00:00:01"
DEFAULT_CENTRAL_ADDRESS: Final = "C0:B0:7A:00:00:02"
DEFAULT_MTU: Final = 247
"""What the central requests by default (fits one 251-byte LE data PDU)."""
DEFAULT_ACL_PACKET_LENGTH: Final = 251
"""LE ACL buffer size of the virtual controllers: 251 as with LE Data Length Extension (Bumble's default
is 27, which makes a 247-MTU write travel as ten HCI fragments and the link ~5x slower)."""
SERVER_MAX_MTU: Final = 517


class VirtualController(Controller):
    """Bumble's virtual controller, with LE Create Connection Cancel implemented.

    Bumble's own answers SUCCESS but keeps the pending connection, so ``Device.connect(timeout=...)``
    never times out against a device that does not advertise: it waits, and connects whenever the
    device advertises again. Here the cancel drops the pending connection and reports it with an LE
    Connection Complete event (status Unknown Connection Identifier), as the spec requires
    (Vol 4, Part E, 7.8.13), so the host's connect fails with a timeout.
    """

    def on_hci_le_create_connection_cancel_command(
        self, _command: hci.HCI_LE_Create_Connection_Cancel_Command
    ) -> hci.HCI_StatusReturnParameters:
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        event = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address.address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # Reaches the host after the Command Complete made of the return value below.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, event)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)


def make_address(value: Address | str) -> Address:
    return value if isinstance(value, Address) else Address(value)  # random (static) address type


class VirtualLink:
    """One shared virtual radio; add as many devices as needed (a peripheral per simulated device,
    a central per simulated phone)."""

    def __init__(self, *, acl_packet_length: int = DEFAULT_ACL_PACKET_LENGTH) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]  # Bumble leaves its __init__ unannotated
        self.acl_packet_length = acl_packet_length
        self.devices: list[Device] = []

    async def add_device(
        self, address: Address | str, *, name: str = "Bumble", max_mtu: int = SERVER_MAX_MTU
    ) -> Device:
        """Create a Device with its own controller on this link and power it on.

        ``max_mtu`` is the largest ATT MTU its GATT server accepts in an MTU exchange."""
        addr = make_address(address)
        controller = VirtualController(f"ctrl-{addr}", link=self.link, public_address=str(addr))
        controller.le_acl_data_packet_length = self.acl_packet_length
        device = Device(name=name, address=addr, host=Host(controller, AsyncPipeSink(controller)))
        device.gatt_server.max_mtu = max_mtu
        await device.power_on()
        self.devices.append(device)
        return device

    async def close(self) -> None:
        """Drop every connection and power the devices off."""
        for device in self.devices:
            for connection in list(device.connections.values()):
                with contextlib.suppress(Exception):  # already gone
                    await connection.disconnect()
            await device.power_off()
        self.devices.clear()


@dataclass
class CentralConnection:
    """A central's LE connection with its GATT client, after the MTU exchange."""

    connection: Connection
    peer: Peer
    mtu: int  # the negotiated ATT MTU (23 when no exchange was made)

    @property
    def connected(self) -> bool:
        return self.connection.handle in self.connection.device.connections


async def connect_central(
    central: Device, address: Address | str, *, mtu: int | None = DEFAULT_MTU, connect_timeout: float = 5.0
) -> CentralConnection:
    """Connect ``central`` to the (advertising) peripheral at ``address`` and exchange MTU.

    ``mtu=None`` skips the exchange (ATT default 23). The negotiated MTU is min(request, server max).
    Raises TimeoutError when the peripheral does not advertise within ``connect_timeout`` (e.g. rebooting)."""
    try:
        connection = await central.connect(make_address(address), timeout=connect_timeout)
    except core.TimeoutError as exc:  # Bumble's own, not the builtin
        raise TimeoutError(f"{address} did not become connectable within {connect_timeout} s") from exc
    peer = Peer(connection)
    negotiated = DEFAULT_ATT_MTU if mtu is None else await peer.request_mtu(mtu)
    return CentralConnection(connection=connection, peer=peer, mtu=negotiated)


@dataclass
class VirtualPair:
    """A peripheral and a central Device on one virtual link."""

    link: VirtualLink
    peripheral: Device
    central: Device
    _closed: bool = field(default=False, repr=False)

    @property
    def peripheral_address(self) -> Address:
        return self.peripheral.random_address

    async def connect(self, *, mtu: int | None = DEFAULT_MTU, connect_timeout: float = 5.0) -> CentralConnection:
        """Connect the central to the peripheral (which must be advertising)."""
        return await connect_central(self.central, self.peripheral_address, mtu=mtu, connect_timeout=connect_timeout)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.link.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def virtual_pair(
    *,
    peripheral_name: str = "Bota",
    peripheral_address: Address | str = DEFAULT_PERIPHERAL_ADDRESS,
    central_address: Address | str = DEFAULT_CENTRAL_ADDRESS,
    peripheral_max_mtu: int = SERVER_MAX_MTU,
    acl_packet_length: int = DEFAULT_ACL_PACKET_LENGTH,
) -> VirtualPair:
    """Two powered-on Bumble Devices (peripheral + central), each with its own virtual controller on a
    shared LocalLink. Nothing advertises yet: an ``OtaPeripheral`` does that when started."""
    link = VirtualLink(acl_packet_length=acl_packet_length)
    peripheral = await link.add_device(peripheral_address, name=peripheral_name, max_mtu=peripheral_max_mtu)
    central = await link.add_device(central_address, name="Bota App")
    return VirtualPair(link=link, peripheral=peripheral, central=central)

"""Reference implementations of the Bota OTA GATT profile (docs/ble-ota.md) on Google's Bumble stack.

- ``profile``: UUIDs, opcodes, result codes and byte codecs (stack independent).
- ``link``: Bumble devices on in-process virtual controllers sharing one ``LocalLink``.
- ``peripheral``: ``OtaPeripheral``, the device side (GATT server).
- ``central``: ``OtaTransport`` (interface), ``BumbleOtaTransport``, ``check_serial`` and ``push_image``, the
  app side.
"""

from bota_ota.sim.ble.central import (
    BumbleOtaTransport,
    DeviceInfo,
    OtaDisconnectedError,
    OtaError,
    OtaProtocolError,
    OtaTimeoutError,
    OtaTransport,
    OtaWrongDeviceError,
    PushReport,
    check_serial,
    push_image,
)
from bota_ota.sim.ble.link import CentralConnection, VirtualLink, VirtualPair, connect_central, virtual_pair
from bota_ota.sim.ble.peripheral import DeviceState, OtaPeripheral, PeripheralCounters
from bota_ota.sim.ble.profile import Opcode, Result, Signature, State, Status

__all__ = [
    "BumbleOtaTransport",
    "CentralConnection",
    "DeviceInfo",
    "DeviceState",
    "Opcode",
    "OtaDisconnectedError",
    "OtaError",
    "OtaPeripheral",
    "OtaProtocolError",
    "OtaTimeoutError",
    "OtaTransport",
    "OtaWrongDeviceError",
    "PeripheralCounters",
    "PushReport",
    "Result",
    "Signature",
    "State",
    "Status",
    "VirtualLink",
    "VirtualPair",
    "check_serial",
    "connect_central",
    "push_image",
    "virtual_pair",
]

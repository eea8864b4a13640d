"""Imports every model so that ``Base.metadata`` is complete (Alembic, the drift check)."""

from bota_ota.accounts.models import ApiToken, AppToken, AppUser, User
from bota_ota.core.audit import AuditEntry
from bota_ota.core.database import Base
from bota_ota.devices.models import Device, DeviceEvent, DeviceGroup, DeviceTag
from bota_ota.firmware.models import Artifact, ModelSettings, Release, SigningKey
from bota_ota.ota.models import Assignment, AssignmentEvent
from bota_ota.rollouts.models import Rollout, RolloutDevice, RolloutEvent, RolloutStage
from bota_ota.transparency.models import LogEntry

__all__ = [
    "ApiToken",
    "AppToken",
    "AppUser",
    "Artifact",
    "Assignment",
    "AssignmentEvent",
    "AuditEntry",
    "Base",
    "Device",
    "DeviceEvent",
    "DeviceGroup",
    "DeviceTag",
    "LogEntry",
    "ModelSettings",
    "Release",
    "Rollout",
    "RolloutDevice",
    "RolloutEvent",
    "RolloutStage",
    "SigningKey",
    "User",
]

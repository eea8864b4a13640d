"""The delivery policy: when a device may be given an update, from what it says about itself.

A battery-powered recorder should not start a download it cannot finish, on a link that costs money, into
storage that is full, or while it still holds recordings nobody has copied off it. The server has a
default (settings: ``BOTA_OTA_DELIVERY_MIN_BATTERY``, ``BOTA_OTA_DELIVERY_NETWORKS``,
``BOTA_OTA_DELIVERY_DEFER_WHILE_UNSYNCED``); a release may override any part of it, and a rollout any part
of that. An assignment keeps the overrides in force when it was made (``Assignment.policy``), so what
decides a device's update does not move under it.

``DeliveryPolicyIn`` is what clients send (every field optional: only what is given overrides);
``DeliveryPolicy`` is the resolved policy, and ``deferral`` the pure check (docs/device-protocol.md,
"Delivery policy").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import Field

from bota_ota.core.schemas import InputModel
from bota_ota.core.settings import Settings

Network = Literal["wifi", "cellular"]
NETWORKS: tuple[Network, ...] = ("wifi", "cellular")

# Why a pending assignment is not delivered in a heartbeat's reply, in the order they are checked.
Deferral = Literal["recording", "retry_wait", "battery_low", "network", "storage", "unsynced_recordings"]
DEFERRALS: tuple[str, ...] = ("recording", "retry_wait", "battery_low", "network", "storage", "unsynced_recordings")


class DeliveryPolicyIn(InputModel):
    """A partial delivery policy: the fields given override the ones below them (server → release →
    rollout)."""

    min_battery: int | None = Field(
        None, ge=0, le=100, description="Battery percentage below which no update starts, unless charging."
    )
    networks: list[Network] | None = Field(
        None, min_length=1, description='Links an update may be downloaded over; ["wifi"] keeps images off cellular.'
    )
    defer_while_unsynced: bool | None = Field(
        None, description="Wait while the device holds recordings that are not synced yet."
    )

    def overrides(self) -> dict[str, Any]:
        """Only the fields given, in JSON form (as stored)."""
        return self.model_dump(exclude_none=True)


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    min_battery: int = 30
    networks: tuple[str, ...] = NETWORKS
    defer_while_unsynced: bool = False

    def with_overrides(self, overrides: dict[str, Any] | None) -> DeliveryPolicy:
        """This policy with stored overrides applied (keys this version does not know are ignored)."""
        if not overrides:
            return self
        policy = self
        if isinstance(overrides.get("min_battery"), int):
            policy = replace(policy, min_battery=overrides["min_battery"])
        if isinstance(overrides.get("networks"), list):
            policy = replace(policy, networks=tuple(str(n) for n in overrides["networks"]))
        if isinstance(overrides.get("defer_while_unsynced"), bool):
            policy = replace(policy, defer_while_unsynced=overrides["defer_while_unsynced"])
        return policy

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_battery": self.min_battery,
            "networks": list(self.networks),
            "defer_while_unsynced": self.defer_while_unsynced,
        }


def merge_overrides(*layers: dict[str, Any] | None) -> dict[str, Any] | None:
    """Later layers win, key by key; None when no layer overrides anything."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer or {})
    return merged or None


def deferral(
    policy: DeliveryPolicy,
    *,
    battery: int | None,
    charging: bool | None,
    network: str | None,
    storage_free_kb: int | None,
    unsynced_recordings: int | None,
    image_size: int | None,
) -> Deferral | None:
    """Why the policy keeps an update from starting now, or None. A value the device did not send never
    blocks (older firmware sends none of them)."""
    if battery is not None and battery < policy.min_battery and not charging:
        return "battery_low"
    if network is not None and network not in policy.networks:
        return "network"
    if storage_free_kb is not None and image_size is not None and storage_free_kb * 1024 < image_size:
        return "storage"
    if policy.defer_while_unsynced and unsynced_recordings:
        return "unsynced_recordings"
    return None


def default_policy(settings: Settings) -> DeliveryPolicy:
    """The server's policy (settings), before any release or rollout overrides it."""
    return DeliveryPolicy(
        min_battery=settings.delivery_min_battery,
        networks=tuple(settings.delivery_networks),
        defer_while_unsynced=settings.delivery_defer_while_unsynced,
    )

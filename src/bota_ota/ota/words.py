"""Plain words for the codes an assignment carries: the errors a device (or the server) reports and the
reasons a pending update waits. The portal shows these next to the code; the codes stay the contract
(docs/device-protocol.md)."""

from __future__ import annotations

ERRORS: dict[str, str] = {
    "crc_mismatch": "The downloaded image did not match its checksum, even after the device's own retries. "
    "The file may be damaged in storage: check the release's .bin before retrying.",
    "download_failed": "The device could not download the image (connection lost too often or the link "
    "expired). It usually works on a better connection.",
    "rolled_back": "The device installed the image and restarted, but came back on its old version: the new "
    "firmware did not start and the bootloader went back to the old one.",
    "delivery_timeout": "The device stopped reporting progress on the update for too long after it was sent, "
    "so the server gave up on it.",
    "power_loss": "The device lost power during the update and kept its old firmware.",
    "flash_write": "The device could not write the image to its flash memory.",
    "signature_invalid": "The image's signature did not verify on the device (missing, made by a key the device "
    "does not trust, or not over this file, model, version or security version): it refused the image and "
    "flashed nothing.",
    "rollback_refused": "The image's security version is below the device's own security counter: it refused "
    "the older, possibly vulnerable image and kept its firmware.",
    "manifest_invalid": "The device could not use the update instructions the server sent.",
    "incompatible_image": "The device refused the image as not made for its hardware.",
    "unknown": "The device reported a failure without saying why.",
}

DEFERRALS: dict[str, str] = {
    "recording": "the device is recording; updates wait until it stops",
    "retry_wait": "waiting before the next attempt",
    "battery_low": "the battery is below the minimum for an update and the device is not charging",
    "network": "the device is on a network this update may not use (e.g. cellular)",
    "storage": "the device has too little free storage for the image",
    "unsynced_recordings": "the device has recordings that are not uploaded yet",
}

# The same reasons in a few words, where a list or a chart has no room for a sentence.
DEFERRAL_LABELS: dict[str, str] = {
    "recording": "recording",
    "retry_wait": "waiting to retry",
    "battery_low": "battery low",
    "network": "network not allowed",
    "storage": "not enough storage",
    "unsynced_recordings": "unsynced recordings",
}


def explain_error(code: str | None) -> str:
    """A sentence for an error code; codes the server does not know are the device's own words."""
    if not code:
        return ""
    return ERRORS.get(code, "Reported by the device; not a code the server knows.")


def explain_deferral(reason: str | None) -> str:
    return DEFERRALS.get(reason or "", reason or "")


def deferral_label(reason: str | None) -> str:
    return DEFERRAL_LABELS.get(reason or "", reason or "")

"""Firmware version strings: semantic versions with an optional leading "v" (v1.0.1, 2.3.0-rc.1).

Ordering follows semver 2.0 (v1.0.10 > v1.0.9 > v1.0.9-rc.1); build metadata (+...) is ignored for
ordering and equality, as semver says.
"""

from __future__ import annotations

import semver

MAX_VERSION_LENGTH = 64


class InvalidVersion(ValueError):
    pass


def parse_version(text: str) -> semver.Version:
    raw = text.strip()
    if not raw:
        raise InvalidVersion("version is empty")
    if len(raw) > MAX_VERSION_LENGTH:
        raise InvalidVersion(f"version is longer than {MAX_VERSION_LENGTH} characters")
    body = raw[1:] if raw[0] in "vV" else raw
    try:
        return semver.Version.parse(body)
    except ValueError:
        raise InvalidVersion(
            f"{raw!r} is not a semantic version like v1.0.1 or v2.0.0-rc.1 (MAJOR.MINOR.PATCH, optional leading v)"
        ) from None


def normalize_version(text: str) -> str:
    """The canonical form used for uniqueness: no leading v, no build metadata."""
    return str(parse_version(text).replace(build=None))


def versions_equal(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    try:
        return parse_version(a).compare(parse_version(b)) == 0
    except InvalidVersion:
        return a.strip() == b.strip()


def version_sort_key(text: str) -> semver.Version:
    return parse_version(text).replace(build=None)


def is_newer(candidate: str, current: str | None) -> bool:
    """True when candidate is semantically newer than current (anything beats an unknown current)."""
    if not current:
        return True
    try:
        return parse_version(candidate).compare(parse_version(current)) > 0
    except InvalidVersion:
        return True


def is_strictly_newer(candidate: str | None, current: str | None) -> bool:
    """True only when both are semantic versions and candidate is newer: nothing unknown or unparsable
    counts as newer (unlike ``is_newer``, which offers anything to a device whose version is unknown)."""
    if not candidate or not current:
        return False
    try:
        return parse_version(candidate).compare(parse_version(current)) > 0
    except InvalidVersion:
        return False


def supersedes(reported: str, assigned: str, *, downgrade_from: str | None = None) -> bool:
    """Whether a device reporting ``reported`` has moved past an assignment of ``assigned``: newer than it
    and, for a downgrade an admin asked for, newer than the version the device was being downgraded from
    (the device reporting that version again is what the downgrade expects, not a reason to drop it)."""
    if not is_strictly_newer(reported, assigned):
        return False
    return downgrade_from is None or is_strictly_newer(reported, downgrade_from)

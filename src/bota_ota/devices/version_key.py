"""A text key whose plain byte order is the semantic-version order of reported firmware versions.

The device list sorts by version at 100,000 devices and more, a page at a time and in CSV exports. Semantic
order (v1.10.0 after v1.9.2, 2.0.0-rc.1 before 2.0.0) is not text order, and reading every device to sort
them in Python would not scale. So each device row keeps ``version_key`` next to ``firmware_version``,
written by the same assignment (an ORM attribute event in ``models.py``: the heartbeat's written-at-once
path and the app relay both set ``firmware_version`` through the ORM), backfilled by migration 0012, and
indexed with ``id``: the database sorts (and pages) by it like any other column. The column uses the
"C" collation on PostgreSQL, so the comparison is bytewise there as on SQLite, whatever the database's
locale (a locale's collation ignores punctuation, which the key relies on).

The encoding (changing it needs a migration that recomputes every key):

* a number is its digit count (two digits) then its digits: ``7`` → ``017``, ``10`` → ``0210``, so a
  longer number sorts after a shorter one and equal lengths compare digit by digit;
* ``MAJOR MINOR PATCH``, then ``~`` for a release or ``!`` and the pre-release identifiers for a
  pre-release (``!`` < ``~``: a pre-release sorts before its release);
* a pre-release identifier is ``0`` + number (numeric) or ``1`` + text (alphanumeric: numeric ones sort
  lower, as semver says), separated by ``,``, which sorts below every identifier character (``-`` included),
  so ``alpha`` < ``alpha,…`` < ``alpha-…``, and fewer identifiers sort first;
* build metadata is ignored, as semver says; ``v1.0.1`` and ``1.0.1`` have the same key;
* a reported version that is not a semantic version gets ``!`` and its text: below every semantic version,
  and still above a device that never reported one (``NULL``, put last by the queries).
"""

from __future__ import annotations

from bota_ota.firmware.versions import InvalidVersion, parse_version

MAX_KEY_LENGTH = 200


def _number(value: int) -> str:
    digits = str(value)
    return f"{len(digits):02d}{digits}"


def version_key(version: str | None) -> str | None:
    """The sort key of a reported version; ``None`` when none was reported."""
    if version is None or not version.strip():
        return None
    try:
        parsed = parse_version(version)
    except InvalidVersion:
        return ("!" + version.strip())[:MAX_KEY_LENGTH]
    key = _number(parsed.major) + _number(parsed.minor) + _number(parsed.patch)
    if parsed.prerelease is None:
        return key + "~"
    idents = ["0" + _number(int(ident)) if ident.isdigit() else "1" + ident for ident in parsed.prerelease.split(".")]
    return (key + "!" + ",".join(idents))[:MAX_KEY_LENGTH]

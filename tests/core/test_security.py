"""Password hashing: argon2id at the production cost, even though the tests hash at a cheaper one."""

from __future__ import annotations

from argon2 import PasswordHasher, Type, extract_parameters, profiles

from bota_ota.core.security import hash_password, verify_password


def test_production_passwords_use_argon2id_at_the_rfc_9106_low_memory_cost(
    production_password_hasher: PasswordHasher,
) -> None:
    # tests/conftest.py swaps in argon2-cffi's CHEAPEST profile for speed; the server keeps this one.
    hashed = production_password_hasher.hash("correct-horse")
    params = extract_parameters(hashed)
    assert params.type is Type.ID
    assert (params.time_cost, params.memory_cost, params.parallelism) == (
        profiles.RFC_9106_LOW_MEMORY.time_cost,
        profiles.RFC_9106_LOW_MEMORY.memory_cost,
        profiles.RFC_9106_LOW_MEMORY.parallelism,
    )
    assert verify_password(hashed, "correct-horse")
    assert not verify_password(hashed, "wrong-horse")


def test_a_hash_checks_only_its_own_password() -> None:
    hashed = hash_password("correct-horse")
    assert hashed.startswith("$argon2id$")
    assert verify_password(hashed, "correct-horse")
    assert not verify_password(hashed, "Correct-horse")
    assert not verify_password("not-a-hash", "correct-horse")

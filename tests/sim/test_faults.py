from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bota_ota.sim.device import DEFAULT_STORAGE_FREE_KB
from bota_ota.sim.faults import Faults, parse_share
from bota_ota.sim.fleet import Credentials, Fleet, FleetConfig


def test_parse_reads_every_fault() -> None:
    f = Faults.parse("drop=0.2, corrupt=0.05,expire=1,power-loss=0.1,record=0.01,record_s=7")
    assert (f.drop, f.corrupt, f.expire, f.power_loss, f.record, f.record_s) == (0.2, 0.05, 1.0, 0.1, 0.01, 7.0)
    g = Faults.parse("bootloop=0.3,low-battery=0.4, cellular=1")
    assert (g.bootloop, g.low_battery, g.cellular) == (0.3, 0.4, 1.0)
    assert (g.drop, g.power_loss, g.record) == (0.0, 0.0, 0.0)


def test_parse_empty_means_no_faults() -> None:
    assert Faults.parse("") == Faults()
    assert Faults.parse(None) == Faults()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus=0.1", "unknown fault"),
        ("drop", "unknown fault"),
        ("drop=lots", "needs a number"),
        ("drop=1.5", "between 0 and 1"),
        ("corrupt=-0.1", "between 0 and 1"),
        ("record_s=0", "positive"),
        ("bootloop=2", "between 0 and 1"),
        ("low_battery=-1", "between 0 and 1"),
        ("cellular=often", "needs a number"),
        ("boot_loop=0.1", "unknown fault"),
    ],
)
def test_parse_refuses_bad_input(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults.parse(text)


def test_str_round_trips() -> None:
    f = Faults.parse("drop=0.5,power_loss=0.25,bootloop=0.5,low_battery=0.1,cellular=0.2")
    assert Faults.parse(str(f)) == f


def test_unknown_fault_message_names_the_new_faults() -> None:
    with pytest.raises(ValueError, match=r"bootloop.*cellular.*low_battery"):
        Faults.parse("bogus=1")


@pytest.mark.parametrize(("text", "share"), [("20%", 0.2), ("0.2", 0.2), ("100%", 1.0), ("0%", 0.0), (" 5.5% ", 0.055)])
def test_fault_devices_share_parses(text: str, share: float) -> None:
    assert parse_share(text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["lots", "120%", "-1", "1.5", ""])
def test_fault_devices_share_refuses_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match=r"percentage|between"):
        parse_share(text)


def test_faults_apply_to_the_chosen_share_of_the_fleet(tmp_path: Path) -> None:
    asyncio.run(_faults_apply_to_the_chosen_share(tmp_path))


async def _faults_apply_to_the_chosen_share(tmp_path: Path) -> None:
    credentials = [Credentials(f"SIM-PIN-{i:05d}", f"token-{i}", "v1.0.0") for i in range(50)]
    config = FleetConfig(
        server="http://127.0.0.1:9", devices=50, faults=Faults(corrupt=1.0), fault_share=0.2, seed=7,
        flash_dir=tmp_path,
    )  # fmt: skip
    async with Fleet(config, credentials) as fleet:
        faulty = [d.device_id for d in fleet.devices if d.faults.corrupt == 1.0]
        healthy = [d for d in fleet.devices if d.faults == Faults()]
    assert len(faulty) == 10 and len(healthy) == 40
    async with Fleet(config, credentials) as again:  # the same seed picks the same devices
        assert [d.device_id for d in again.devices if d.faults.corrupt == 1.0] == faulty


def test_condition_faults_apply_to_the_chosen_share_and_the_others_are_healthy(tmp_path: Path) -> None:
    asyncio.run(_condition_faults_apply_to_the_chosen_share(tmp_path))


async def _condition_faults_apply_to_the_chosen_share(tmp_path: Path) -> None:
    credentials = [Credentials(f"SIM-PIN-{i:05d}", f"token-{i}", "v1.0.0") for i in range(50)]
    config = FleetConfig(
        server="http://127.0.0.1:9", devices=50, faults=Faults.parse("low_battery=1,cellular=1"), fault_share=0.2,
        seed=3, flash_dir=tmp_path,
    )  # fmt: skip
    async with Fleet(config, credentials) as fleet:
        faulty = [d for d in fleet.devices if d.faults != Faults()]
        healthy = [d for d in fleet.devices if d.faults == Faults()]
        assert len(faulty) == 10 and len(healthy) == 40
        for d in faulty:  # 15 %, not charging, on cellular: what the heartbeat says
            assert d.conditions() == {
                "battery": 15, "charging": False, "network": "cellular",
                "storage_free_kb": DEFAULT_STORAGE_FREE_KB, "unsynced_recordings": 0,
            }  # fmt: skip
        for d in healthy:  # enough battery for the default policy, on Wi-Fi
            assert d.battery >= 30 and not d.charging and d.network == "wifi"
        # A test clears the condition (and a device can be put into it again).
        sick = faulty[0]
        sick.clear_conditions()
        assert sick.battery >= 30 and sick.network == "wifi"
        sick.set_battery(15, charging=True)
        assert (sick.battery, sick.charging) == (15, True)


def test_probabilities_below_one_hit_some_devices_only(tmp_path: Path) -> None:
    asyncio.run(_probabilities_below_one(tmp_path))


async def _probabilities_below_one(tmp_path: Path) -> None:
    credentials = [Credentials(f"SIM-PIN-{i:05d}", f"token-{i}", "v1.0.0") for i in range(200)]
    config = FleetConfig(
        server="http://127.0.0.1:9", devices=200, faults=Faults.parse("low_battery=0.5,cellular=0.25"), seed=5,
        flash_dir=tmp_path,
    )  # fmt: skip
    async with Fleet(config, credentials) as fleet:
        low = sum(d.battery == 15 for d in fleet.devices)
        cellular = sum(d.network == "cellular" for d in fleet.devices)
    assert 60 < low < 140 and 20 < cellular < 80, (low, cellular)

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bota_ota.sim.faults import Faults, parse_share
from bota_ota.sim.fleet import Credentials, Fleet, FleetConfig


def test_parse_reads_every_fault() -> None:
    f = Faults.parse("drop=0.2, corrupt=0.05,expire=1,power-loss=0.1,record=0.01,record_s=7")
    assert (f.drop, f.corrupt, f.expire, f.power_loss, f.record, f.record_s) == (0.2, 0.05, 1.0, 0.1, 0.01, 7.0)


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
    ],
)
def test_parse_refuses_bad_input(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults.parse(text)


def test_str_round_trips() -> None:
    f = Faults.parse("drop=0.5,power_loss=0.25")
    assert Faults.parse(str(f)) == f


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

from __future__ import annotations

import pytest

from bota_ota.sim.faults import Faults


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

"""Energy per token: RAPL counters read from a powercap tree (wraparound included), the estimate otherwise."""

from __future__ import annotations

import time

import pytest

from pocketlm.evaluate.energy import EnergyMeter, per_token


def powercap(root, packages: dict[str, tuple[int, int]]):
    """A powercap tree as Linux lays it out: package domains with a subdomain each."""
    for name, (energy, max_range) in packages.items():
        d = root / name
        (d / f"{name}:0").mkdir(parents=True)
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
        (d / f"{name}:0" / "energy_uj").write_text("999999999\n")  # a core subdomain: inside the package, not added
    return root


def test_rapl_counters_are_summed_over_packages_and_wraparound_is_handled(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": (1_000_000, 10_000_000), "intel-rapl:1": (9_500_000, 10_000_000)})
    with EnergyMeter("cpu", powercap=root) as m:
        (root / "intel-rapl:0" / "energy_uj").write_text("3500000\n")  # +2.5 J
        (root / "intel-rapl:1" / "energy_uj").write_text("500000\n")  # wrapped: +1.0 J
    assert m.energy.source == "RAPL" and m.energy.measured
    assert m.energy.joules == pytest.approx(3.5)
    assert per_token(m.energy, 7) == {"joules_per_token": 0.5, "energy_source": "RAPL"}


def test_without_readable_counters_the_figure_is_an_estimate_that_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETLM_WATTS_PER_CORE", "10")
    root = tmp_path / "none"  # no powercap tree at all (a VM, a container, a Mac)
    with EnergyMeter("cpu", powercap=root) as m:
        t = time.process_time()
        while time.process_time() - t < 0.3:  # 0.3 s of CPU work
            sum(range(1000))
    assert not m.energy.measured and m.energy.source.startswith("estimated")
    assert "10 W per busy core" in m.energy.source
    assert 2.5 <= m.energy.joules <= 4.5  # about 0.3 s x 10 W


def test_eval_reports_energy_per_decoded_token(tiny_run, shop_data, capsys):
    import json

    from pocketlm.cli import main
    assert main(["eval", str(tiny_run), "--data", str(shop_data), "--max-tokens", "512", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["decode_joules_per_token"] > 0 and r["energy_source"]
    assert main(["eval", str(tiny_run), "--data", str(shop_data), "--max-tokens", "512"]) == 0
    assert "J per decoded token" in capsys.readouterr().out

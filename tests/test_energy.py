"""Energy through a real local bench: the device runner reads fake sensor trees (RAPL, an INA219
hwmon) given with its --sysfs-root, and the host judges joules per inference and the -40% rule.

A RAPL counter here is a FIFO whose successive reads are scripted values (a thread writes one
value per open), so the measured joules are exact whatever the machine's speed. The thread waits
0.1 s after each value, so the runner has closed one read before the next value is offered."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from litelm_edge import manifest
from litelm_edge.devices.bench import bench

QUICK = dict(reps=2, warmup=0, iters=3, prompt_len=16, gen_len=4, concurrency=1, qps_iters=1)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


class ScriptedRapl:
    """class/powercap/intel-rapl:0/energy_uj as a FIFO answering each read with the next value
    (µJ); the runner reads it at meter creation, then at start and stop of prefill and of decode."""

    def __init__(self, root: Path, values: list[int], wrap_uj: int = 1_000_000_000):
        zone = root / "class/powercap/intel-rapl:0"
        _tree(root, {"class/powercap/intel-rapl:0/name": "package-0",
                     "class/powercap/intel-rapl:0/max_energy_range_uj": str(wrap_uj)})
        self.path, self.values, self.reads = zone / "energy_uj", list(values), 0
        os.mkfifo(self.path)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        value = self.values[0]
        while True:  # after the script, the last value again: an extra read must not hang the runner
            value = self.values.pop(0) if self.values else value
            with open(self.path, "w") as f:  # blocks until the runner opens it for reading
                f.write(f"{value}\n")
            self.reads += 1
            time.sleep(0.1)  # the runner closes this read first; a value written to it would be lost


@pytest.fixture
def art(x86_fp32, tmp_path):
    """A copy of the session's fp32 artifact whose manifest we may edit."""
    return Path(shutil.copytree(x86_fp32, tmp_path / "art"))


def _edit_manifest(art: Path, **kw):
    m = json.loads((art / "manifest.json").read_text())
    manifest.write(art, dict(m, **kw))  # re-sealed: a valid artifact id


def test_ina219_power_is_measured_through_the_bench(art, tmp_path):
    """2.5 W constant on an INA219 (power1_input, µW): exactly 2.5 W mean, and J per inference is
    the prefill phase's joules over its inferences."""
    sysfs = _tree(tmp_path / "sys", {"class/hwmon/hwmon0/name": "cpu_thermal",
                                     "class/hwmon/hwmon0/temp1_input": "40000",
                                     "class/hwmon/hwmon2/name": "ina219",
                                     "class/hwmon/hwmon2/power1_input": "2500000",
                                     "class/thermal/thermal_zone0/type": "cpu-thermal",
                                     "class/thermal/thermal_zone0/temp": "47500"})
    r = bench(art, QUICK, sysfs_root=sysfs, log=lambda m: None)
    e, runner = r["energy"], r["energy"]["runner"]
    assert e["how"] == "measured (hwmon:ina219/power1)" and runner["sensor"] == "hwmon:ina219/power1"
    pre = runner["prefill"]
    assert pre["mean_watts"] == pytest.approx(2.5, rel=1e-9) and pre["joules"] == pytest.approx(2.5 * pre["seconds"], rel=1e-9)
    assert pre["seconds"] >= r["prefill_ms"]["wall_s"]  # the meter's window holds the timed phase
    assert e["j_per_inference"] == pytest.approx(pre["joules"] / r["prefill_ms"]["n"], rel=1e-12)
    assert r["prefill_ms"]["n"] == QUICK["reps"] * QUICK["iters"]
    assert r["thermal"]["start_c"] == {"cpu-thermal": 47.5}  # read from the same tree


def test_rapl_counter_is_measured_through_the_bench(art, tmp_path):
    """Scripted package counter: prefill 5.0 -> 8.0 J, decode wraps at 1000 J (999.0 -> 0.5 J)."""
    rapl = ScriptedRapl(tmp_path / "sys", [1_000_000, 5_000_000, 8_000_000, 999_000_000, 500_000])
    r = bench(art, QUICK, sysfs_root=tmp_path / "sys", log=lambda m: None)
    assert rapl.reads == 5, "the runner read the counter another number of times than scripted"
    runner = r["energy"]["runner"]
    assert runner["sensor"] == "rapl:package-0" and r["energy"]["how"] == "measured (rapl:package-0)"
    assert runner["prefill_j"] == pytest.approx(3.0) and runner["decode_j"] == pytest.approx(1.5)
    assert r["energy"]["j_per_inference"] == pytest.approx(3.0 / 6)


def test_cpu_time_linear_estimate_without_a_sensor(art, tmp_path):
    """No sensor in the tree: idle W for the wall time plus (full - idle) W x busy-core share."""
    (tmp_path / "empty").mkdir()
    _edit_manifest(art, power={"name": "test board", "idle_w": 2.0, "full_load_w": 10.0, "cores": 4})
    r = bench(art, QUICK, sysfs_root=tmp_path / "empty", log=lambda m: None)
    p = r["prefill_ms"]
    assert r["energy"]["runner"]["sensor"] is None and "no RAPL or hwmon" in r["energy"]["runner"]["note"]
    assert r["energy"]["how"] == "estimated (cpu-time-linear model, test board)"
    want = (2.0 * p["wall_s"] + 8.0 * p["cpu_s"] / 4) / p["n"]
    assert r["energy"]["j_per_inference"] == pytest.approx(want, rel=1e-12)
    assert r["energy"]["model"] == {"idle_w": 2.0, "full_load_w": 10.0, "cores": 4, "source": None}


def test_energy_reduction_verdict_against_the_fp32_baseline(art, tmp_path):
    """min_energy_reduction = 0.40 (rpi4's rule): 3.0 J baseline, then 1.5 J passes (-50%) and
    2.1 J fails (-30%), from measured joules."""
    _edit_manifest(art, thresholds={"min_energy_reduction": 0.40})

    def bench_at(name: str, prefill_uj: int, baseline=None) -> dict:
        ScriptedRapl(tmp_path / name, [0, 1_000_000, 1_000_000 + prefill_uj, 0, 0])
        return bench(art, QUICK, baseline, sysfs_root=tmp_path / name, log=lambda m: None)
    base = tmp_path / "fp32-bench.json"
    base.write_text(json.dumps(bench_at("fp32", 3_000_000)))
    for name, uj, ok in (("good", 1_500_000, True), ("poor", 2_100_000, False)):
        r = bench_at(name, uj, base)
        (row,) = r["thresholds"]
        assert row["threshold"] == "min_energy_reduction" and row["value"] == pytest.approx(1 - uj / 3_000_000)
        assert row["pass"] is ok and r["ok"] is ok
    without = bench(art, QUICK, sysfs_root=tmp_path / "empty-base", log=lambda m: None)
    assert without["thresholds"][0]["pass"] is None and "needs --baseline" in without["thresholds"][0]["note"]

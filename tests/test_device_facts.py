"""Device facts and energy readers of devices/facts.py against fake /proc, /etc and /sys trees."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from litelm_edge.devices import facts as D

PI_CPUINFO = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\n"
                     for i in range(4)) + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_pi_facts(tmp_path):
    root = _tree(tmp_path, {
        "proc/cpuinfo": PI_CPUINFO, "proc/meminfo": "MemTotal:        3884420 kB\nMemFree: 1 kB\n",
        "etc/os-release": 'NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
        "sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
        "sys/class/thermal/thermal_zone0/temp": "51121\n",
        "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor": "ondemand\n",
        "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "1500000\n",
        "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "1800000\n"})
    f = D.probe_facts(str(root), str(root / "sys"))
    assert (f["cpu_model"], f["cores"], f["board"]) == (
        "Cortex-A72", 4, "Raspberry Pi 4 Model B Rev 1.4")
    assert f["mem_total_mb"] == 3793.4 and f["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert f["temperatures_c"] == {"cpu-thermal": 51.121}
    assert f["cpufreq"] == {"governor": "ondemand", "cur_mhz": 1500, "max_mhz": 1800}


def test_x86_facts(tmp_path):
    cpuinfo = "".join(f"processor\t: {i}\nmodel name\t: AMD EPYC 9654 96-Core Processor\n\n"
                      for i in range(2))
    root = _tree(tmp_path, {"proc/cpuinfo": cpuinfo})
    f = D.probe_facts(str(root), str(root / "sys"))
    assert (f["cpu_model"], f["cores"], f["mem_total_mb"], f["temperatures_c"]) == (
        "AMD EPYC 9654 96-Core Processor", 2, None, {})


def test_throttled_flags(tmp_path, monkeypatch):
    assert D.decode_throttled("throttled=0x50005")["flags"] == [
        "under-voltage", "throttled", "under-voltage-occurred", "throttled-occurred"]
    assert D.decode_throttled("throttled=0x0")["flags"] == []
    exe = tmp_path / "bin/vcgencmd"
    _tree(tmp_path, {"bin/vcgencmd": "#!/bin/sh\necho throttled=0x20000\n"})
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}:{os.environ['PATH']}")
    assert D.throttling() == {"raw": "0x20000", "flags": ["arm-freq-capped-occurred"]}


def _rapl(root: Path, zones: dict[str, tuple[str, int]]) -> Path:
    files = {}
    for z, (name, uj) in zones.items():
        files[f"class/powercap/{z}/name"] = name
        files[f"class/powercap/{z}/energy_uj"] = str(uj)
        files[f"class/powercap/{z}/max_energy_range_uj"] = "1000000000"
    return _tree(root, files)


def test_rapl_counts_packages_only_and_wraps(tmp_path):
    root = _rapl(tmp_path, {"intel-rapl:0": ("package-0", 999_000_000),
                            "intel-rapl:0:0": ("core", 5), "intel-rapl:1": ("psys", 7)})
    m = D.EnergyMeter(str(root))
    assert m.source == "rapl:package-0"
    m.start()
    (root / "class/powercap/intel-rapl:0/energy_uj").write_text("2000000")  # wrapped at 1e9
    (root / "class/powercap/intel-rapl:0:0/energy_uj").write_text("999999999")
    r = m.stop()
    assert r["joules"] == pytest.approx(3.0) and r["method"] == "measured"


def test_rapl_unreadable_is_reported(tmp_path):
    root = _rapl(tmp_path, {"intel-rapl:0": ("package-0", 1)})
    p = root / "class/powercap/intel-rapl:0/energy_uj"
    p.unlink()
    p.mkdir()  # unreadable as a file even for root (a 0400 file is readable by root)
    m = D.EnergyMeter(str(root))
    assert m.source is None and "not readable" in m.note
    m.start()
    assert m.stop() is None


def test_hwmon_ina219_power_is_integrated(tmp_path):
    root = _tree(tmp_path, {"class/hwmon/hwmon0/name": "k10temp", "class/hwmon/hwmon0/temp1_input": "40000",
                            "class/hwmon/hwmon3/name": "ina219",
                            "class/hwmon/hwmon3/power1_input": "2000000"})  # µW
    m = D.EnergyMeter(str(root), period=0.01)
    assert m.source == "hwmon:ina219/power1"
    m.start()
    for _ in range(3):  # let a few samples happen; the value is constant so the result is exact
        m._stop.wait(0.02)
    r = m.stop()
    assert r["mean_watts"] == pytest.approx(2.0, rel=1e-9) and r["joules"] > 0


def test_hwmon_ina3221_channels_and_energy_counter(tmp_path):
    root = _tree(tmp_path, {"class/hwmon/hwmon1/name": "ina3221",
                            "class/hwmon/hwmon1/in1_input": "5000", "class/hwmon/hwmon1/curr1_input": "400",
                            "class/hwmon/hwmon1/in2_input": "1000", "class/hwmon/hwmon1/curr2_input": "100"})
    m = D.EnergyMeter(str(root), period=0.01)
    assert m.source == "hwmon:ina3221/ch1+ina3221/ch2"
    m.start()
    m._stop.wait(0.03)
    assert m.stop()["mean_watts"] == pytest.approx(2.1, rel=1e-9)  # 5 V x 0.4 A + 1 V x 0.1 A
    root = _tree(tmp_path / "b", {"class/hwmon/hwmon0/name": "acpi_power",
                                  "class/hwmon/hwmon0/energy1_input": "1000000"})
    m = D.EnergyMeter(str(root))
    m.start()
    (root / "class/hwmon/hwmon0/energy1_input").write_text("3500000")
    assert (m.source, m.stop()["joules"]) == ("hwmon:acpi_power/energy1", pytest.approx(2.5))


def test_no_sensor_means_none(tmp_path):
    m = D.EnergyMeter(str(tmp_path))
    m.start()
    assert (m.source, m.stop()) == (None, None)

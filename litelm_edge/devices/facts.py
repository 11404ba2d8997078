"""Device facts and energy meters, read from /proc, /etc and /sys on the device.

Uploaded beside the runner core (devices/runner.py); needs only the standard library (numpy for its
version). Every reader takes a root folder, so the tests use fake trees. Energy: RAPL (powercap
intel-rapl:N/energy_uj, µJ counters) or hwmon sensors (energy*_input µJ counters; power*_input µW,
or INA3221 in*_input mV x curr*_input mA, sampled and integrated); none exposed -> the host
estimates with the target's power model.
"""
from __future__ import annotations

import glob
import os
import platform
import re
import resource
import shutil
import subprocess
import threading
import time
from pathlib import Path

ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55",
             "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd09": "Cortex-A73",
             "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0d": "Cortex-A77",
             "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510"}
THROTTLE_BITS = {0: "under-voltage", 1: "arm-freq-capped", 2: "throttled", 3: "soft-temp-limit",
                 16: "under-voltage-occurred", 17: "arm-freq-capped-occurred",
                 18: "throttled-occurred", 19: "soft-temp-limit-occurred"}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def cpu_facts(root: str = "/") -> dict:
    """CPU model and core count from /proc/cpuinfo (x86 'model name', Pi 'Model', ARM parts)."""
    text = _read(os.path.join(root, "proc/cpuinfo")) or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        fields.setdefault(k.strip(), v.strip())
    parts = sorted({ARM_PARTS.get(p, p) for p in re.findall(r"CPU part\s*:\s*(\S+)", text)})
    model = fields.get("model name") or (parts and " + ".join(parts)) or fields.get("Hardware")
    cores = len(re.findall(r"^processor\s*:", text, re.M)) or os.cpu_count()
    return {"cpu_model": model or platform.processor() or "unknown", "cores": cores,
            "board": fields.get("Model"), "arch": platform.machine()}


def mem_total_mb(root: str = "/") -> float | None:
    m = re.search(r"MemTotal:\s*(\d+)\s*kB", _read(os.path.join(root, "proc/meminfo")) or "")
    return round(int(m.group(1)) / 1024, 1) if m else None


def os_name(root: str = "/") -> str:
    text = _read(os.path.join(root, "etc/os-release")) or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else platform.system()


def temperatures(sysfs_root: str = "/sys") -> dict[str, float]:
    """°C per thermal zone, keyed by zone type (x86_pkg_temp, cpu-thermal, ...)."""
    out = {}
    for zone in sorted(glob.glob(os.path.join(sysfs_root, "class/thermal/thermal_zone*"))):
        milli = _int(os.path.join(zone, "temp"))
        if milli is not None:
            name = _read(os.path.join(zone, "type")) or os.path.basename(zone)
            out[name if name not in out else os.path.basename(zone)] = milli / 1000.0
    return out


def cpufreq(sysfs_root: str = "/sys") -> dict:
    base = os.path.join(sysfs_root, "devices/system/cpu/cpu0/cpufreq")
    cur, top = _int(base + "/scaling_cur_freq"), _int(base + "/cpuinfo_max_freq")
    return {"governor": _read(base + "/scaling_governor"),
            "cur_mhz": cur // 1000 if cur else None, "max_mhz": top // 1000 if top else None}


def decode_throttled(text: str) -> dict:
    """'throttled=0x50005' (vcgencmd get_throttled) -> {'raw': '0x50005', 'flags': [...]}."""
    m = re.search(r"0x[0-9a-fA-F]+", text or "")
    if not m:
        return {"raw": text, "flags": []}
    value = int(m.group(0), 16)
    return {"raw": m.group(0), "flags": [n for b, n in THROTTLE_BITS.items() if value >> b & 1]}


def throttling() -> dict | None:
    """Raspberry Pi firmware throttling flags, when vcgencmd is installed."""
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return decode_throttled(out.stdout) if out.returncode == 0 else None


def probe_facts(root: str = "/", sysfs_root: str = "/sys") -> dict:
    return {**cpu_facts(root), "mem_total_mb": mem_total_mb(root), "os": os_name(root),
            "kernel": platform.release(), "temperatures_c": temperatures(sysfs_root),
            "cpufreq": cpufreq(sysfs_root), "throttling": throttling()}


def _rapl(sysfs_root: str) -> tuple[list, str | None]:
    """Top-level RAPL zones as (label, energy_uj path, wrap µJ); packages only when present."""
    zones = [z for z in sorted(glob.glob(os.path.join(sysfs_root, "class/powercap/intel-rapl:*")))
             if re.search(r"intel-rapl:\d+$", z)]
    found = [((_read(z + "/name") or os.path.basename(z)), z + "/energy_uj",
              _int(z + "/max_energy_range_uj") or 2**32) for z in zones]
    readable = [f for f in found if _int(f[1]) is not None]
    if found and not readable:
        return [], "RAPL present but energy_uj is not readable (root only): run the bench as root"
    packages = [f for f in readable if f[0].startswith("package")]
    return packages or readable, None


def _hwmon(sysfs_root: str) -> tuple[list, list]:
    """hwmon energy counters (label, path, wrap) and power readers (label, [paths], scale)."""
    counters, powers = [], []
    for d in sorted(glob.glob(os.path.join(sysfs_root, "class/hwmon/hwmon*"))):
        chip = _read(d + "/name") or os.path.basename(d)
        for p in sorted(glob.glob(d + "/energy*_input")):
            if _int(p) is not None:
                counters.append((f"{chip}/{os.path.basename(p)[:-6]}", p, 2**64))
        pw = [p for p in sorted(glob.glob(d + "/power*_input")) if _int(p) is not None]
        powers += [(f"{chip}/{os.path.basename(p)[:-6]}", [p], 1) for p in pw]
        if not pw:  # INA3221: bus mV x current mA = µW per channel
            for v in sorted(glob.glob(d + "/in*_input")):
                c = d + "/curr" + os.path.basename(v)[2:]
                if os.path.exists(c) and _int(v) is not None and _int(c) is not None:
                    powers.append((f"{chip}/ch{os.path.basename(v)[2:-6]}", [v, c], 1))
    return counters, powers


class EnergyMeter:
    """Measured energy between start() and stop(); `source` is None when nothing is exposed."""

    def __init__(self, sysfs_root: str = "/sys", period: float = 0.05):
        self.period = period  # s between power samples
        self.counters, self.note = _rapl(sysfs_root)
        kind = "rapl"
        hw_counters, self.powers = _hwmon(sysfs_root)
        if not self.counters and hw_counters:
            self.counters, kind = hw_counters, "hwmon"
        if self.counters:
            self.powers = []
        elif self.powers:
            kind = "hwmon"
        labels = [c[0] for c in self.counters] + [p[0] for p in self.powers]
        self.source = f"{kind}:{'+'.join(labels)}" if labels else None
        self._thread = None

    def _power_uw(self) -> float:
        total = 0.0
        for _, paths, _ in self.powers:
            vals = [_int(p) or 0 for p in paths]
            total += vals[0] if len(vals) == 1 else vals[0] * vals[1]
        return total

    def _sample(self):
        prev_t, prev_p = self._t0, self._power_uw()
        while not self._stop.wait(self.period):
            t, p = time.perf_counter(), self._power_uw()
            self._uj += (p + prev_p) / 2 * (t - prev_t)  # trapezoid, µW x s = µJ
            prev_t, prev_p = t, p
        t, p = time.perf_counter(), self._power_uw()
        self._uj += (p + prev_p) / 2 * (t - prev_t)
        self._t_end = t

    def start(self):
        self._t0 = time.perf_counter()
        self._start = [_int(c[1]) or 0 for c in self.counters]
        self._uj, self._stop = 0.0, threading.Event()
        if self.powers:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def stop(self) -> dict | None:
        """{'joules', 'seconds', 'mean_watts', 'source', 'method': 'measured'} or None."""
        if self.source is None:
            return None
        if self._thread:
            self._stop.set()
            self._thread.join()
        seconds = (self._t_end if self._thread else time.perf_counter()) - self._t0
        for (_, path, wrap), s in zip(self.counters, self._start, strict=True):
            e = _int(path) or 0
            self._uj += e - s if e >= s else e + wrap - s  # the counter wrapped once
        joules = self._uj / 1e6
        return {"joules": joules, "seconds": seconds, "mean_watts": joules / seconds if seconds
                else None, "source": self.source, "method": "measured"}


def emulated() -> bool:
    """Running under qemu-user (timings are then no speed claim): the kernel's CPU is another
    architecture (an x86 /proc/cpuinfo under an aarch64 python), or a qemu binfmt handler is
    registered for this very architecture (a board never registers one for itself)."""
    machine = platform.machine()
    if Path(f"/proc/sys/fs/binfmt_misc/qemu-{machine}").exists():
        return True
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    x86_kernel = "GenuineIntel" in cpuinfo or "AuthenticAMD" in cpuinfo
    return x86_kernel != (machine in ("x86_64", "i686", "i386"))


def peak_rss_mb() -> float:
    """This process's memory high-water mark. VmHWM belongs to the address space made at exec;
    ru_maxrss can carry the forking parent's peak (a torch process for the local bench)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_facts(root: str = "/", sysfs_root: str = "/sys") -> dict:
    """The keys the report prints (cpu, cores, machine, os, mem_gb) plus the probe's details."""
    import numpy as np
    f = probe_facts(root, sysfs_root)
    return {**f, "cpu": f["cpu_model"], "machine": platform.machine(), "emulated": emulated(),
            "hostname": platform.node(),
            "system": platform.system(),
            "release": platform.release(), "python": platform.python_version(),
            "numpy": np.__version__, "mem_gb": round((f["mem_total_mb"] or 0) / 1024, 2)}


def energy_record(meter, pre: dict | None, dec: dict | None) -> dict:
    """Joules of the timed prefill and decode phases when a sensor exists (the host else estimates)."""
    return {"prefill_j": pre and pre["joules"], "decode_j": dec and dec["joules"],
            "sensor": meter.source, "prefill": pre, "decode": dec,
            "note": meter.note or (None if meter.source else "no RAPL or hwmon power sensor")}


def affinity() -> list[int]:
    """The CPUs this process may run on (taskset, cgroup cpusets), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: every CPU
        return list(range(os.cpu_count() or 1))


def cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (taskset's notation)."""
    out, start = [], None
    for i, c in enumerate(cpus):
        start = c if start is None else start
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            out.append(f"{start}-{c}" if c != start else str(c))
            start = None
    return ",".join(out)

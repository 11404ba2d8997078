#!/usr/bin/env python3
"""The one script CI runs per device: build TARGET at PRECISION, bench it, write its bundle.

    python tools/ci_device.py TARGET [PRECISION] --checkpoint RUN --out bundles/ [--reps 3 ...]
    python tools/ci_device.py --cache-keys      # toolchains=HASH, rootfs=HASH: the workflow's cache keys

The workflow (.github/workflows/devices.yml) runs exactly this for each matrix entry, and the
project's own CI (.ci/run, tests/test_ci.py) runs it for x86 and rpi4. It starts the emulated arm64
device (tools/emulated_device.py start ... stop) when the target's architecture is not this
machine's, and benches on a real device when $LITELM_DEVICE_<TARGET> is set (user@host[:port]; the
private key in $LITELM_DEVICE_<TARGET>_KEY, the host's known_hosts line in ..._KNOWN_HOSTS, else its
key is accepted on first use). Exit: 0 all passed or not judged, 1 a build/bench/threshold failed,
2 bad input, 3 the emulated device could not start.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
EMULATOR = TOOLS / "emulated_device.py"


def emulator(verb: str, state: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(EMULATOR), verb, "--state", str(state)]
    if os.geteuid() != 0:  # a CI runner's user: the emulated device needs root (chroot, mount)
        cmd = ["sudo", "-n", "-E", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True)


def device_config(env, secret: str, tmp: Path) -> str:
    """ssh config lines giving the real device its key (and known_hosts) from the secrets."""
    from litelm_edge.devices.remote import parse_address
    _, host, _ = parse_address(env[secret])
    lines = [f"Host {host}"]
    if env.get(f"{secret}_KEY"):
        key = tmp / "device_key"
        key.write_text(env[f"{secret}_KEY"].strip() + "\n")
        key.chmod(0o600)
        lines.append(f"  IdentityFile {key}")
    if env.get(f"{secret}_KNOWN_HOSTS"):
        (tmp / "device_known_hosts").write_text(env[f"{secret}_KNOWN_HOSTS"].strip() + "\n")
        lines.append(f"  UserKnownHostsFile {tmp / 'device_known_hosts'}")
    return "\n".join(lines) + "\n"


def cache_keys() -> str:
    """`name=hash` lines for $GITHUB_OUTPUT, each hashing the pins its cached folder is made from:
    the toolchain venvs (python, torch, every backend's VENV and PACKAGES) and the emulated arm64
    rootfs (its own key: suite, Debian packages, wheels). Read from the installed package, so a
    repository calling the workflow gets the same keys as this one."""
    import hashlib
    import importlib.util
    import json
    from litelm_edge import backends, toolchain
    pins = {"python": platform.python_version(), "torch": toolchain.torch_pin(),
            "torch_index": os.environ.get("LITELM_EDGE_TORCH_INDEX", "")}
    for name in backends.names():
        build = backends.load(name).module("build")
        if hasattr(build, "VENV"):
            pins[build.VENV] = list(getattr(build, "PACKAGES", []))
    spec = importlib.util.spec_from_file_location("emulated_device", EMULATOR)
    emu = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emu)
    digest = hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:16]
    return f"toolchains={digest}\nrootfs={emu.rootfs_key(emu.DEFAULT_PACKAGES)}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--cache-keys"]:
        print(cache_keys())
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target")
    ap.add_argument("precision", nargs="?", help="default: the target's")
    ap.add_argument("--checkpoint", required=True, type=Path,
                    help="run folder or checkpoint (the train job's)")
    ap.add_argument("--out", required=True, type=Path,
                    help="folder receiving the bundle <target>-<precision>/")
    ap.add_argument("--data", type=Path,
                    help="held-out data for the build's parity check (default: the checkpoint's)")
    from litelm_edge.flows import ci
    for name in ("reps", "warmup", "prompt_len", "gen_len", "concurrency"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(ci.PROTOCOL, name))
    a = ap.parse_args(argv)
    from litelm_edge.backends import load_target
    from litelm_edge.config import UserError
    protocol = dict(reps=a.reps, warmup=a.warmup, prompt_len=a.prompt_len, gen_len=a.gen_len,
                    concurrency=a.concurrency)
    with tempfile.TemporaryDirectory(prefix="litelm-ci-") as td:
        tmp, state = Path(td), Path(td) / "emulated"
        try:
            name, t = load_target(a.target)
            arch = t["target"].get("arch")
            emulate = arch not in (None, platform.machine())
            secret = ci.secret_name(name)
            config = device_config(os.environ, secret, tmp) if os.environ.get(secret) else ""
            if emulate:
                started = emulator("start", state)
                print(started.stdout, end="", flush=True)
                if started.returncode != 0:
                    print(f"error: emulated device did not start: {started.stderr.strip()}", file=sys.stderr)
                    return 3
                config += (state / "ssh_config").read_text()
            if config:
                (tmp / "ssh_config").write_text(config)
                os.environ["LITELM_EDGE_SSH_CONFIG"] = str(tmp / "ssh_config")
            benches = ci.plan(name, "emulated-arm64" if emulate else None)
            code, bundle = ci.device_bundle(a.checkpoint, name, a.precision, a.out, benches, protocol, a.data)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return getattr(e, "exit_code", 2)
        finally:
            if (state / "pid").exists():
                stopped = emulator("stop", state)
                print(stopped.stdout + stopped.stderr, end="", file=sys.stderr)
    print(f"bundle {bundle}: {'FAIL' if code else 'ok'} (see {bundle / 'junit.xml'})")
    return code


if __name__ == "__main__":
    sys.exit(main())

"""`emulated_device.py start` / `stop`: the emulated device in the background, reached as printed.

start runs the device in a detached `serve` process and returns once sshd answers, having written
an ssh config (Host emulated-arm64: port, user, its own key and known_hosts) that litelm-edge and
OpenSSH both take as is:

    litelm-edge bench ARTIFACT --remote emulated-arm64 --ssh-config STATE/ssh_config
    ssh -F STATE/ssh_config emulated-arm64

stop ends the serve process, which unmounts the device and removes its overlay. Plain stdlib: it
is loaded by emulated_device.py's main (the module `emu` passed in).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ALIAS = "emulated-arm64"  # the Host name in the written ssh config
START_TIMEOUT = 900.0  # s: a cold rootfs build (debootstrap + wheels) under load


def state_dir(emu, given: str | None) -> Path:
    return Path(given) if given else emu.cache_root() / "run"


def _give_to_caller(paths: list[Path]) -> None:
    """Under sudo, hand the files to the user who ran sudo (ssh refuses keys others can read)."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if uid and gid:
        for p in paths:
            os.chown(p, int(uid), int(gid))


def write_ssh_config(dev, state: Path) -> Path:
    key, known = state / "client_key", state / "known_hosts"
    key.write_bytes(dev.key_path.read_bytes())
    key.chmod(0o600)
    known.write_text(dev.host_key_line + "\n")
    cfg = state / "ssh_config"
    cfg.write_text(f"Host {ALIAS}\n  HostName {dev.host}\n  Port {dev.port}\n  User {dev.user}\n"
                   f"  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
                   "  StrictHostKeyChecking yes\n  BatchMode yes\n")
    _give_to_caller([state, key, known, cfg])
    return cfg


def serve(emu, packages, port: int, state: Path) -> int:
    """Run the device until SIGTERM; `ready` appears once the ssh config is written."""
    rootfs = emu.build_rootfs(packages=packages)
    with emu.start_device(rootfs, port) as dev:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leaves the with block: unmounts
        write_ssh_config(dev, state)
        # root: the overlay, unmounted by stop
        (state / "ready").write_text(f"{dev.host}:{dev.port} {dev.root}\n")
        while True:
            time.sleep(3600)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(emu, packages, port: int, state: Path) -> str:
    """Start `serve` detached; returns what to print once the device answers."""
    pid_file = state / "pid"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        raise emu.DeviceError(f"an emulated device already runs from {state} (pid {pid_file.read_text().strip()}): "
                              f"stop it with `tools/emulated_device.py stop --state {state}`")
    state.mkdir(parents=True, exist_ok=True)
    (state / "ready").unlink(missing_ok=True)
    log = state / "serve.log"
    cmd = [sys.executable, str(Path(emu.__file__).resolve()), "serve", "--port", str(port),
           "--state", str(state), "--packages", ",".join(packages)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while not (state / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.poll() is None and proc.terminate()
            pid_file.unlink(missing_ok=True)
            last = (log.read_text(errors="replace").strip().splitlines() or ["(empty log)"])[-1]
            raise emu.DeviceError(f"the emulated device did not start: {last.removeprefix('error: ')} (log: "
                                  f"{log})")
        time.sleep(0.2)
    cfg = state / "ssh_config"
    where, root = (state / "ready").read_text().split()
    return (f"emulated arm64 device up at {where} (its / is {root}), pid {proc.pid}\n"
            f"ssh config: {cfg}\n"
            f"bench:  litelm-edge bench ARTIFACT --remote {ALIAS} --ssh-config {cfg}\n"
            f"ssh:    ssh -F {cfg} {ALIAS}\n"
            f"stop:   python3 {emu.__file__} stop --state {state}")


def stop(emu, state: Path, timeout: float = 60.0) -> str:
    pid_file = state / "pid"
    if not pid_file.exists():
        raise emu.DeviceError(f"no emulated device runs from {state} (no pid file): nothing to stop")
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reaps it when this process started it (tests)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    for name in ("pid", "ready", "ssh_config", "client_key", "known_hosts"):
        (state / name).unlink(missing_ok=True)
    return f"emulated device (pid {pid}) stopped"

"""A real OpenSSH server for tests: generated host and user keys, a temp folder, a free port.

`sshd` listens on 127.0.0.1; `netns_sshd` (root only) runs it inside a network namespace with its
own address 10.199.<n>.2, reached over a veth pair from 10.199.<n>.1. `ssh_home` points HOME at a
temp folder holding the user key (~/.ssh/id_ed25519) and an empty known_hosts, and hides any agent.
tests/conftest.py loads this file as a plugin (pytest_plugins), so any test can ask for them.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:" + os.environ.get("PATH", ""))
NEEDS_SSHD = pytest.mark.skipif(SSHD is None, reason="OpenSSH server not installed: "
                                "run tools/setup-ssh.sh (apt-get install openssh-server)")


@dataclass
class Server:
    dir: Path
    host: str
    port: int
    user: str
    config: Path
    host_pub: str  # "ssh-ed25519 AAAA..."
    netns: str | None = None
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {self.host_pub}\n"

    def start(self):
        cmd = [SSHD, "-D", "-e", "-f", str(self.config)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation dir
        log = open(self.dir / "sshd.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        _wait_listening(self.host, self.port, self.proc, self.dir / "sshd.log")

    def kill(self):
        """SIGKILL the listener and every session process it forked (a crash, not a shutdown)."""
        import psutil

        if self.proc is None:
            return
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait()
        self.proc = None


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_listening(host: str, port: int, proc: subprocess.Popen, log: Path, limit: float = 10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-500:]}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {host}:{port} within {limit} s")


def keygen(path: Path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
                   check=True)


def make_server(root: Path, user_pub: Path, host: str = "127.0.0.1", port: int | None = None,
                netns: str | None = None, cache: Path | None = None) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    keygen(root / "host_ed25519")
    (root / "authorized_keys").write_text(user_pub.read_text())
    cache = cache or root / "device-cache"
    port = port or _free_port()
    cfg = root / "sshd_config"
    cfg.write_text("\n".join([
        f"ListenAddress {host}", f"Port {port}", f"HostKey {root / 'host_ed25519'}",
        f"PidFile {root / 'sshd.pid'}", f"AuthorizedKeysFile {root / 'authorized_keys'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no", "LogLevel ERROR",
        "Subsystem sftp internal-sftp", f'SetEnv XDG_CACHE_HOME="{cache}"', ""]))
    pub = (root / "host_ed25519.pub").read_text().split()
    return Server(root, host, port, getpass.getuser(), cfg, f"{pub[0]} {pub[1]}", netns)


@pytest.fixture
def ssh_home(tmp_path, monkeypatch) -> Path:
    """HOME with ~/.ssh/id_ed25519 and an empty known_hosts; no ssh-agent."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    keygen(home / ".ssh" / "id_ed25519")
    (home / ".ssh" / "known_hosts").write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def trust(home: Path, server: Server):
    with open(home / ".ssh" / "known_hosts", "a") as f:
        f.write(server.known_hosts_line)


@pytest.fixture
def sshd(tmp_path, ssh_home):
    """A running sshd on 127.0.0.1 whose host key is NOT yet in known_hosts."""
    if SSHD is None:
        pytest.skip("OpenSSH server not installed: run tools/setup-ssh.sh")
    server = make_server(tmp_path / "sshd", ssh_home / ".ssh" / "id_ed25519.pub")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def netns_sshd(tmp_path, ssh_home):
    """sshd in its own network namespace at 10.199.<n>.2 (root only)."""
    if SSHD is None:
        pytest.skip("OpenSSH server not installed: run tools/setup-ssh.sh")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a network-namespace device host needs root and iproute2")
    n = os.getpid() % 200 + 20
    ns, veth = f"litelm-test-{n}", f"ltl{n}"
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # leftover from a crash
    subprocess.run(["ip", "link", "del", veth + "h"], capture_output=True)
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", veth + "h", "type", "veth", "peer", "name", veth + "d")
        sh("ip", "link", "set", veth + "d", "netns", ns)
        sh("ip", "addr", "add", f"10.199.{n}.1/24", "dev", veth + "h")
        sh("ip", "link", "set", veth + "h", "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.199.{n}.2/24", "dev", veth + "d")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", veth + "d", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        server = make_server(tmp_path / "sshd-ns", ssh_home / ".ssh" / "id_ed25519.pub",
                             host=f"10.199.{n}.2", port=22, netns=ns)
        server.start()
        yield server
        server.kill()
    finally:
        subprocess.run(["ip", "link", "del", veth + "h"], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)

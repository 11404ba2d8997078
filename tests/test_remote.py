"""Connection, host keys, remote commands and their timeouts against a real sshd."""
from __future__ import annotations

import subprocess
import time

import psutil
import pytest

from fake_artifact import make_artifact
from litelm_edge.config import UserError
from litelm_edge.devices import push as P
from litelm_edge.devices.remote import Remote, RemoteError, parse_address
from sshd import keygen, trust


def test_parse_address():
    assert parse_address("pi@host:2222") == ("pi", "host", 2222)
    assert parse_address("host") == (None, "host", None)
    assert parse_address("root@[::1]:22") == ("root", "::1", 22)
    with pytest.raises(UserError, match="expected user@host"):
        parse_address("a b@c")


def test_run_quotes_every_argument(sshd, ssh_home):
    trust(ssh_home, sshd)
    tricky = ["a b", "$(touch /tmp/litelm-pwned)", "'q'", '"dq"', "*", ";", "`id`", ""]
    with Remote(sshd.address) as r:
        out = r.run(["printf", "%s\\n", *tricky], timeout=10).stdout
    assert out.split("\n")[:-1] == tricky


def test_unknown_host_key_is_refused_then_accepted(sshd, ssh_home):
    with pytest.raises(RemoteError, match=r"unknown host key .*--accept-new-host-key") as e:
        Remote(sshd.address)
    assert "\n" not in str(e.value)
    assert (ssh_home / ".ssh/known_hosts").read_text() == ""
    with Remote(sshd.address, accept_new=True) as r:
        assert r.run(["true"], timeout=10).rc == 0
    assert sshd.host_pub in (ssh_home / ".ssh/known_hosts").read_text()
    with Remote(sshd.address) as r:  # recorded: no flag needed any more
        assert r.run(["echo", "ok"], timeout=10).stdout == "ok\n"


def test_accepted_key_goes_to_the_configs_user_known_hosts_file(sshd, ssh_home, tmp_path, monkeypatch):
    """--ssh-config naming a UserKnownHostsFile: --accept-new-host-key records the key there (as
    OpenSSH writes to the first UserKnownHostsFile), never in ~/.ssh/known_hosts; later runs read it."""
    kh = tmp_path / "emulated_known_hosts"
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host dev\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
                   f"  UserKnownHostsFile {kh}\n")
    monkeypatch.setenv("LITELM_EDGE_SSH_CONFIG", str(cfg))
    with Remote("dev", accept_new=True) as r:
        assert r.run(["true"], timeout=10).rc == 0
    assert sshd.host_pub in kh.read_text()
    assert (ssh_home / ".ssh/known_hosts").read_text() == ""
    with Remote("dev") as r:  # recorded where the config reads it: no flag needed any more
        assert r.run(["echo", "ok"], timeout=10).stdout == "ok\n"


def test_changed_host_key_is_refused(sshd, ssh_home, tmp_path):
    keygen(tmp_path / "other")
    other = (tmp_path / "other.pub").read_text().split()
    (ssh_home / ".ssh/known_hosts").write_text(f"[{sshd.host}]:{sshd.port} {other[0]} {other[1]}\n")
    with pytest.raises(RemoteError, match="CHANGED.*ssh-keygen -R"):
        Remote(sshd.address, accept_new=True)


def test_wrong_key_is_refused(sshd, ssh_home):
    trust(ssh_home, sshd)
    keygen(ssh_home / ".ssh/id_ed25519.new")
    (ssh_home / ".ssh/id_ed25519.new").replace(ssh_home / ".ssh/id_ed25519")
    (ssh_home / ".ssh/id_ed25519.new.pub").replace(ssh_home / ".ssh/id_ed25519.pub")
    with pytest.raises(RemoteError, match="authentication failed.*authorized_keys"):
        Remote(sshd.address)


def test_connection_refused(sshd, ssh_home):
    trust(ssh_home, sshd)
    sshd.kill()
    with pytest.raises(RemoteError, match="connection refused"):
        Remote(sshd.address)


def test_ssh_config_and_agent(sshd, ssh_home, monkeypatch):
    """HostName/Port/User/IdentityFile from ~/.ssh/config; then the key only in ssh-agent."""
    trust(ssh_home, sshd)
    key = ssh_home / ".ssh/id_ed25519"
    moved = ssh_home / "keys/device_key"
    moved.parent.mkdir()
    key.replace(moved)
    (ssh_home / ".ssh/config").write_text(
        f"Host mydevice\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile ~/keys/device_key\n")
    with Remote("mydevice") as r:
        assert r.label == sshd.address
    (ssh_home / ".ssh/config").write_text(f"Host mydevice\n  HostName {sshd.host}\n")
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    env = dict(kv.split("=", 1) for kv in agent.replace(";", "\n").split() if "=" in kv)
    monkeypatch.setenv("SSH_AUTH_SOCK", env["SSH_AUTH_SOCK"])
    try:
        subprocess.run(["ssh-add", "-q", str(moved)], check=True, capture_output=True)
        with Remote(f"mydevice:{sshd.port}") as r:
            assert r.run(["true"], timeout=10).rc == 0
    finally:
        psutil.Process(int(env["SSH_AGENT_PID"])).kill()


def _alive(marker: str) -> list:
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if marker in " ".join(p.info["cmdline"] or []) and p.info["status"] != "zombie"]


def _wait_gone(marker: str, limit: float = 10.0) -> list:
    deadline = time.monotonic() + limit
    while _alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _alive(marker)


def test_timeout_kills_the_remote_process_group(sshd, ssh_home):
    trust(ssh_home, sshd)
    with Remote(sshd.address) as r:
        # a child process in the group too: both must go
        with pytest.raises(RemoteError, match="exceeded its 1 s timeout and was killed"):
            r.run(["sh", "-c", "sleep 987.61 & sleep 987.62; wait"], timeout=1)
    assert _wait_gone("987.6") == []


def test_timeout_holds_for_a_command_that_never_stops_writing(sshd, ssh_home):
    """The deadline is checked before any output is read: a command whose output never pauses
    (there is always more to read) is still stopped at its timeout, and its group killed."""
    trust(ssh_home, sshd)
    with Remote(sshd.address) as r:
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match="exceeded its 1 s timeout and was killed"):
            r.run(["sh", "-c", "exec yes 987.63"], timeout=1)
        assert time.monotonic() - t0 < 15
    assert _wait_gone("987.63") == []


def test_ctrl_c_is_raised_by_our_loop_never_inside_paramiko(sshd, ssh_home, monkeypatch):
    """A Ctrl-C that arrives while paramiko runs (here: inside its buffer's read_ready) surfaces as
    KeyboardInterrupt from our loop, after paramiko returned: raised inside paramiko it could leave a
    lock held and hang the kill of the remote group (a CLI that ignored Ctrl-C for 20+ s, once)."""
    import os
    import signal
    import traceback
    import paramiko.buffered_pipe as bp
    trust(ssh_home, sshd)
    real, calls = bp.BufferedPipe.read_ready, []

    def read_ready(self):
        calls.append(1)
        if len(calls) == 40:  # by then the group id has been read
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler here, inside paramiko's call
        return real(self)

    with Remote(sshd.address) as r:
        monkeypatch.setattr(bp.BufferedPipe, "read_ready", read_ready)
        with pytest.raises(KeyboardInterrupt) as e:
            r.run(["sh", "-c", "sleep 987.64"], timeout=60)
    assert traceback.extract_tb(e.value.__traceback__)[-1].filename.endswith("devices/remote.py")
    assert _wait_gone("987.64") == []


def test_ctrl_c_kills_the_remote_process_group(sshd, ssh_home, tmp_path):
    trust(ssh_home, sshd)
    script = tmp_path / "client.py"
    script.write_text(
        "import sys\nfrom litelm_edge.devices.remote import Remote\n"
        f"r = Remote({sshd.address!r})\n"
        "r.run(['sh', '-c', 'echo started >&2; sleep 987.71'], timeout=60,"
        " on_line=lambda l: print(l, flush=True))\n")
    p = subprocess.Popen([sys_executable(), str(script)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "started\n"
    assert len(_alive("987.71")) >= 1
    p.send_signal(2)
    assert p.wait(timeout=20) != 0
    assert _wait_gone("987.71") == []


def sys_executable():
    import sys
    return sys.executable


def test_netns_device_and_proxyjump(netns_sshd, sshd, ssh_home, tmp_path):
    """A device with its own address in a network namespace, directly and through a jump host."""
    trust(ssh_home, netns_sshd)
    art = make_artifact(tmp_path / "art", {"w.bin": 300_000})
    with Remote(netns_sshd.address) as r:
        assert r.label == f"{netns_sshd.user}@{netns_sshd.host}:22"
        assert f"inet {netns_sshd.host}/24" in r.run(["ip", "-o", "addr"], timeout=10).stdout
        assert P.push(r, art).bytes_sent == 300_000 + (art / "manifest.json").stat().st_size
    trust(ssh_home, sshd)
    (ssh_home / ".ssh/config").write_text(
        f"Host dev\n  HostName {netns_sshd.host}\n  ProxyJump jump\n"
        f"Host jump\n  HostName {sshd.host}\n  Port {sshd.port}\n")
    with Remote("dev") as r:
        assert len(r.hops) == 1
        assert r.run(["echo", "via jump"], timeout=10).stdout == "via jump\n"

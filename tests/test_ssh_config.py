"""ssh config resolved as OpenSSH does: a host defined in an Included file gets its port and user
(paramiko alone ignores Include), each value names the file and line it came from, with ssh -G and
without it (the documented subset)."""
from __future__ import annotations

import shutil

import pytest

from litelm_edge.config import UserError
from litelm_edge.devices import ssh_config as S
from litelm_edge.devices.remote import Remote, RemoteError
from sshd import trust


def _configs(tmp_path):
    (tmp_path / "conf.d").mkdir()
    inc = tmp_path / "conf.d/pi.conf"
    inc.write_text("# the lab's Pi\nHost pi4 lab-*\n  HostName 10.9.8.7\n  Port=2222\n  User pi\n"
                   "  IdentityFile /keys/pi\nHost !lab-x *\n  User fallback\n")
    main = tmp_path / "config"
    main.write_text(f"Include {tmp_path}/conf.d/*.conf\nHost *\n  Port 22\n  IdentitiesOnly yes\n")
    return main, inc


@pytest.fixture(params=["ssh -G", "subset"])
def how(request, monkeypatch):
    if request.param == "ssh -G" and shutil.which("ssh") is None:
        pytest.skip("no ssh client: the subset is what runs here")
    if request.param == "subset":
        monkeypatch.setattr(S, "ssh_g", lambda alias, path: None)
    return request.param


def test_a_host_from_an_included_file(tmp_path, how):
    main, inc = _configs(tmp_path)
    cfg = S.resolve("pi4", main)
    assert (cfg["hostname"], cfg["port"], cfg["user"], cfg["_by"]) == ("10.9.8.7", "2222", "pi", how)
    assert cfg["identityfile"] == ["/keys/pi"]
    assert cfg["_origins"]["port"] == f"{inc}:4" and cfg["_origins"]["user"] == f"{inc}:5"
    assert cfg["_origins"]["identitiesonly"] == f"{main}:4"
    other = S.resolve("lab-x", main)  # matches `lab-*`, and `!lab-x` keeps the fallback user away
    assert other["user"] == "pi" and other["hostname"] == "10.9.8.7"
    plain = S.resolve("elsewhere", main)
    assert (plain["hostname"], plain["port"], plain["user"]) == ("elsewhere", "22", "fallback")
    assert plain["_origins"]["user"] == f"{inc}:8" and "identityfile" not in plain  # ssh's defaults left out


def test_match_host_and_equals_and_a_relative_include(tmp_path, monkeypatch):
    """The subset: `Match host`, `Key=value`, a relative Include read under ~/.ssh."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh/extra").write_text("Match host 10.*\n  User=matched\n")
    main = tmp_path / "config"
    main.write_text("Host dev\n  HostName 10.0.0.2\nInclude extra\n")
    values, origins = S.read("dev", main)
    assert values == {"hostname": "10.0.0.2", "user": "matched"}
    assert origins["user"] == f"{tmp_path}/.ssh/extra:2"


def test_bad_configs_are_one_line(tmp_path, how):
    bad = tmp_path / "config"
    bad.write_text('Host x\n  HostName "unclosed\n')
    with pytest.raises(UserError, match=r"config.*fix the ssh config") as e:
        S.resolve("x", bad)
    assert "\n" not in str(e.value)
    loop = tmp_path / "loop"
    loop.write_text(f"Include {loop}\n")
    with pytest.raises(UserError, match="fix the ssh config"):
        S.resolve("x", loop)


def test_connect_through_an_included_host_names_the_file(sshd, ssh_home, tmp_path, monkeypatch):
    """A real connection to a host defined only in an Included file; a failure names the line."""
    trust(ssh_home, sshd)
    (tmp_path / "inc").write_text(f"Host device\n  HostName {sshd.host}\n  Port {sshd.port}\n  User "
                                  f"{sshd.user}\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Include {tmp_path}/inc\n")
    monkeypatch.setenv("LITELM_EDGE_SSH_CONFIG", str(cfg))
    with Remote("device") as r:
        assert r.label == sshd.address and r.run(["true"], timeout=10).rc == 0
    sshd.kill()
    with pytest.raises(RemoteError, match=rf"connection refused.*port from {tmp_path}/inc:3") as e:
        Remote("device")
    assert "\n" not in str(e.value)

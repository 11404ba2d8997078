"""Push against a real sshd: hash-skip, atomic rename, quoting, and transport faults."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import paramiko
import pytest

from fake_artifact import make_artifact
from litelm_edge.config import UserError
from litelm_edge.devices import push as P
from litelm_edge.devices.remote import Remote, RemoteError
from litelm_edge.manifest import read_manifest
from sshd import trust


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _same_tree(local: Path, remote: Path) -> bool:
    names = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    have = sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file())
    return names == have and all(_sha(local / n) == _sha(remote / n) for n in names)


@pytest.fixture
def art(tmp_path):
    return make_artifact(tmp_path / "art", {"prefill.onnx": 300_000, "decode.onnx": 200_000,
                                            "tok/tokenizer.json": 1000})


def test_push_then_second_push_sends_nothing(sshd, ssh_home, art, monkeypatch):
    trust(ssh_home, sshd)
    with Remote(sshd.address) as r:
        first = P.push(r, art)
        dest = sshd.dir / "device-cache/litelm-edge/artifacts" / read_manifest(art)["artifact_id"]
        assert first.remote_dir == str(dest)
        assert first.sent[-1] == "manifest.json" and first.skipped == []
        assert first.bytes_sent == sum(p.stat().st_size for p in art.rglob("*") if p.is_file())
        assert _same_tree(art, dest)
        puts = []
        real_put = paramiko.SFTPClient.put
        monkeypatch.setattr(paramiko.SFTPClient, "put",
                            lambda self, *a, **k: puts.append(a) or real_put(self, *a, **k))
        second = P.push(r, art)
    assert (second.sent, second.bytes_sent, puts) == ([], 0, [])
    assert sorted(second.skipped) == sorted(first.sent)


def test_damaged_remote_file_is_sent_again(sshd, ssh_home, art):
    trust(ssh_home, sshd)
    with Remote(sshd.address) as r:
        dest = Path(P.push(r, art).remote_dir)
        (dest / "decode.onnx").write_bytes(b"garbage")
        again = P.push(r, art)
    assert again.sent == ["decode.onnx"] and again.bytes_sent == 200_000
    assert _same_tree(art, dest)


def test_local_file_not_matching_manifest_is_refused(art):
    (art / "decode.onnx").write_bytes(b"changed")
    with pytest.raises(UserError, match="does not match its manifest.*rebuild"):
        P.local_files(art)


def test_paths_with_spaces_and_command_substitution(sshd, ssh_home, tmp_path):
    trust(ssh_home, sshd)
    evil = f"dir with space $(touch {tmp_path}/pwned) `touch {tmp_path}/pwned2`; ls"
    art = make_artifact(tmp_path / evil / "art", {"a b $(x).bin": 5000})
    root = tmp_path / f"device {evil}"
    with Remote(sshd.address) as r:
        res = P.push(r, art, root=str(root))
    assert res.remote_dir.startswith(str(root))
    assert _same_tree(art, Path(res.remote_dir))
    assert not list(tmp_path.glob("pwned*"))


def test_sshd_killed_mid_upload_then_next_push_completes(sshd, ssh_home, tmp_path):
    trust(ssh_home, sshd)
    art = make_artifact(tmp_path / "art", {"small.bin": 1000, "big.bin": 16_000_000})

    def kill_midway(name, done, total):
        if name == "big.bin" and done > total // 4:
            sshd.kill()

    with Remote(sshd.address) as r:
        with pytest.raises(RemoteError, match=r"upload of big.bin failed after \d+ of 16000000"):
            P.push(r, art, progress=kill_midway)
    dest = sshd.dir / "device-cache/litelm-edge/artifacts" / read_manifest(art)["artifact_id"]
    left = sorted(p.name for p in dest.iterdir())  # only hidden partials, never a final name
    assert left and all(n.startswith((".big.bin.", ".small.bin.")) and n.endswith(P.PART)
                        for n in left)
    sshd.start()
    with Remote(sshd.address) as r:
        res = P.push(r, art)
    assert res.sent == ["small.bin", "big.bin", "manifest.json"]
    assert _same_tree(art, dest)  # and no *.litelm-part left behind


@pytest.fixture
def tiny_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a 1 MB tmpfs as the device's disk needs root")
    mnt = tmp_path / "tiny disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("precheck", [True, False], ids=["df-precheck", "write-fails"])
def test_disk_full(sshd, ssh_home, tmp_path, tiny_tmpfs, monkeypatch, precheck):
    trust(ssh_home, sshd)
    art = make_artifact(tmp_path / "art", {"a.bin": 600_000, "b.bin": 900_000})
    if not precheck:  # claim plenty of space up front, so the upload itself hits ENOSPC
        real = P.prepare
        monkeypatch.setattr(P, "prepare", lambda *a: (lambda d, _, h: (d, 1 << 40, h))(*real(*a)))
    with Remote(sshd.address) as r:
        with pytest.raises(RemoteError, match=r"disk full writing .*MB free: free space") as e:
            P.push(r, art, root=str(tiny_tmpfs))
    assert "\n" not in str(e.value)
    dest = tiny_tmpfs / "artifacts" / read_manifest(art)["artifact_id"]
    finals = sorted(p.name for p in dest.iterdir())
    assert "manifest.json" not in finals and not [n for n in finals if n.endswith(P.PART)]
    assert all(_sha(dest / n) == _sha(art / n) for n in finals)


def test_fetch_is_all_or_nothing(sshd, ssh_home, tmp_path):
    trust(ssh_home, sshd)
    (tmp_path / "remote.json").write_text('{"ok": true}')
    with Remote(sshd.address) as r:
        got = P.fetch(r, str(tmp_path / "remote.json"), tmp_path / "local.json")
        assert got.read_text() == '{"ok": true}'
        with pytest.raises(RemoteError, match="cannot fetch"):
            P.fetch(r, str(tmp_path / "missing.json"), tmp_path / "other.json")
    assert not list(tmp_path.glob("other.json*"))

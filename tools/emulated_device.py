#!/usr/bin/env python3
"""An emulated arm64 device: a Debian rootfs run under qemu-user, reached over SSH.

Tests and CI use it to prove that aarch64 artifacts run on an aarch64 Linux, reached the same way
as a real Raspberry Pi. Needs root (chroot, mount) and a host with qemu-user-static + binfmt_misc.

    python3 tools/emulated_device.py build [--packages numpy,onnxruntime]
    python3 tools/emulated_device.py start    # in the background; prints its ssh config and the bench line
    python3 tools/emulated_device.py stop     # ends it: unmounts, removes the overlay
    python3 tools/emulated_device.py check    # build, start, import every runtime over ssh

Plain stdlib on purpose: it runs before any project dependency is installed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = "bookworm"  # Debian 12: python3.11, glibc 2.36, like Raspberry Pi OS (bookworm)
MIRROR = "http://deb.debian.org/debian"
PYTHON_VERSION = "3.11"  # the suite's python3; wheels are picked for this version
SITE_DIR = "usr/local/lib/python3.11/dist-packages"  # on the device python's default sys.path
DEBS = "python3,openssh-server"  # on top of debootstrap's minbase variant
FORMAT = 3  # bump when the rootfs layout changes, so old caches are not reused
# Every runtime the targets use, pinned to versions seen working under qemu-aarch64; rpi4 needs
# only tvm, android only litert, and a "runtime missing" test none (see --packages).
DEFAULT_PACKAGES = ("numpy==2.4.6", "onnxruntime==1.32.0", "apache-tvm==0.27.0.post1",
                    "apache-tvm-ffi==0.1.14.post0", "ai-edge-litert==2.3.0")
HOST_PACKAGES = ("qemu-user-static", "binfmt-support", "debootstrap", "openssh-server",
                 "openssh-client")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
CHECK_IMPORTS = {  # package name -> python run on the device to prove it imports
    "numpy": "import numpy, platform; print(platform.machine(), 'numpy', numpy.__version__)",
    "onnxruntime": "import onnxruntime as m; print('onnxruntime', m.__version__)",
    "apache-tvm": "import tvm; tvm.runtime; print('tvm', tvm.__version__)",
    "ai-edge-litert": "import ai_edge_litert.interpreter as m; print('ai_edge_litert ok')",
}


class DeviceError(RuntimeError):
    """One line: what is wrong and how to fix it."""


def _run(cmd: list[str], fix: str = "", **kw) -> subprocess.CompletedProcess:
    """Run cmd; on failure raise one line with the command, its last stderr line and the fix."""
    p = subprocess.run(cmd, capture_output=True, **{"text": True, **kw})
    if p.returncode != 0:
        err = p.stderr if isinstance(p.stderr, str) else p.stderr.decode(errors="replace")
        last = (err.strip().splitlines() or ["(no stderr)"])[-1]
        fix = f"; {fix}" if fix else ""
        raise DeviceError(f"{Path(cmd[0]).name} failed ({p.returncode}): {last}{fix}")
    return p


def cache_root() -> Path:
    """$LITELM_EDGE_CACHE (default ~/.cache/litelm-edge) / emulated-arm64"""
    base = os.environ.get("LITELM_EDGE_CACHE") or Path.home() / ".cache/litelm-edge"
    return Path(base) / "emulated-arm64"


def ensure_host_packages() -> None:
    """apt-get install what the host needs, once (cheap when present)."""
    missing = [p for p in HOST_PACKAGES
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise DeviceError(f"host packages missing and no apt-get: install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], "check network access to the Debian mirror", env=env)
    _run(["apt-get", "install", "-y", "-qq", *missing], "run as root", env=env)


def enable_binfmt() -> tuple[bool, str]:
    """Make the kernel run aarch64 ELF files through qemu. Returns (ok, reason when not ok)."""
    if os.geteuid() != 0:
        return False, "emulated device needs root (chroot, mount): run as root"
    entry = BINFMT / "qemu-aarch64"
    try:
        if not (BINFMT / "register").exists():
            _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
        if not entry.exists() or "enabled" not in entry.read_text():
            ensure_host_packages()
            _run(["update-binfmts", "--enable", "qemu-aarch64"])
    except (DeviceError, OSError) as e:
        return False, f"cannot enable qemu-aarch64 binfmt ({e}); the container needs --privileged"
    flags = [ln.split()[1] for ln in entry.read_text().splitlines() if ln.startswith("flags: ")]
    if not flags or "F" not in flags[0]:
        # Without the F (fix-binary) flag qemu would have to live inside every chroot.
        return False, "qemu-aarch64 binfmt lacks the F flag: apt-get install --reinstall " \
                      "qemu-user-static"
    return True, ""


def rootfs_key(packages) -> str:
    spec = "\n".join([str(FORMAT), SUITE, DEBS, PYTHON_VERSION, *sorted(packages)])
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def build_rootfs(cache_dir: Path | None = None, packages=DEFAULT_PACKAGES) -> Path:
    """The cached arm64 rootfs for this package list, built (~1 min) on the first call."""
    cache_dir = Path(cache_dir or cache_root())
    dest = cache_dir / f"{SUITE}-{rootfs_key(packages)}"
    if (dest / ".complete").exists():
        return dest
    if os.geteuid() != 0:
        raise DeviceError("building the arm64 rootfs needs root (debootstrap, chroot): run as root")
    ensure_host_packages()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{dest.name}-", dir=cache_dir))
    try:
        root = tmp / "root"
        _install_wheels(tmp / "site", packages)  # first: a bad package name fails in seconds
        _debootstrap(root)
        _configure(root)
        (root / SITE_DIR).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (root / SITE_DIR).rmdir()  # the python3.11 deb ships it empty
        (tmp / "site").rename(root / SITE_DIR)
        (root / ".complete").write_text(_installed(root / SITE_DIR))
        os.rename(root, dest)  # atomic: a reader sees no rootfs or a whole one
    except OSError:
        if not (dest / ".complete").exists():  # not a parallel build that won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _debootstrap(root: Path) -> None:
    """First stage only (downloads debs), then extract every deb: no emulated second stage."""
    _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", f"--include={DEBS}",
          SUITE, str(root), MIRROR], f"check that {MIRROR} is reachable")
    archives = root / "var/cache/apt/archives"
    for deb in sorted(archives.glob("*.deb")):
        # --keep-directory-symlink keeps the merged /usr (bin -> usr/bin) that debootstrap made.
        tar = _run(["dpkg-deb", "--fsys-tarfile", str(deb)], f"{deb.name} is damaged: rerun",
                   text=False)
        _run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)], "check free disk space",
             input=tar.stdout, text=False)
        deb.unlink()
    shutil.rmtree(root / "debootstrap", ignore_errors=True)


def _configure(root: Path) -> None:
    """What the packages' maintainer scripts would have done, reduced to what sshd needs."""
    share = root / "usr/share/base-passwd"
    sshd = "sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"  # sshd's privilege-separation user
    passwd = (share / "passwd.master").read_text() + sshd
    (root / "etc/passwd").write_text(passwd)
    (root / "etc/group").write_text((share / "group.master").read_text())
    # '*' (not '!'): no password login, but the account is not locked, so key login works.
    shadow = "".join(f"{line.split(':')[0]}:*:19700:0:99999:7:::\n" for line in passwd.splitlines())
    (root / "etc/shadow").write_text(shadow)
    os.chmod(root / "etc/shadow", 0o640)
    (root / "etc/hostname").write_text("emulated-arm64\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost emulated-arm64\n")
    (root / "root").mkdir(mode=0o700, exist_ok=True)
    awk = root / "usr/bin/awk"  # mawk's postinst (update-alternatives) never ran; remote.py's push uses awk
    if not awk.exists() and (root / "usr/bin/mawk").exists():
        awk.symlink_to("mawk")
    if (root / "proc").is_symlink():  # debootstrap in a container links proc -> the host's /proc
        (root / "proc").unlink()
        (root / "proc").mkdir()


def _install_wheels(site: Path, packages) -> None:
    site.mkdir(parents=True)
    if not packages:
        return
    # pip takes --platform literally, so list every manylinux glibc <= bookworm's 2.36.
    platforms = [f"manylinux_2_{v}_aarch64" for v in range(36, 16, -1)] + ["manylinux2014_aarch64"]
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--only-binary=:all:",
           "--implementation", "cp", "--python-version", PYTHON_VERSION, "--target", str(site)]
    for p in platforms:
        cmd += ["--platform", p]
    _run(cmd + list(packages), "check the package names and that each has an aarch64 wheel")


def _installed(site: Path) -> str:
    """name==version per wheel in the site folder, one a line: what the device really runs."""
    dists = sorted(d.name[:-len(".dist-info")] for d in site.glob("*.dist-info"))
    return "".join(d.replace("-", "==", 1) + "\n" for d in dists)


@dataclasses.dataclass
class Device:
    host: str
    port: int
    user: str
    key_path: Path  # client private key (ed25519)
    host_key_line: str  # "[127.0.0.1]:PORT ssh-ed25519 AAAA..."
    known_hosts_path: Path
    root: Path  # the device's / as seen from the host (an overlay over the cached rootfs)

    def ssh_args(self) -> list[str]:
        return ["ssh", "-i", str(self.key_path), "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts_path}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                f"{self.user}@{self.host}"]

    def ssh(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.ssh_args() + [command], capture_output=True, text=True,
                              timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_device(rootfs: Path, port: int = 0):
    """Run sshd in the rootfs on 127.0.0.1:port; yields a Device. Writes go to a throwaway overlay,
    so the cached rootfs stays clean and every device starts the same."""
    ok, why = enable_binfmt()
    if not ok:
        raise DeviceError(why)
    port = port or free_port()
    tmp = Path(tempfile.mkdtemp(prefix="litelm-emu-"))
    mounts: list[Path] = []
    sshd = None
    try:
        root = _mount_all(Path(rootfs), tmp, mounts)
        dev = _write_keys(tmp, root, port)
        sshd = subprocess.Popen(["chroot", str(root), "/usr/sbin/sshd", "-D", "-e", "-f",
                                 "/run/emu/sshd_config"], stdout=subprocess.DEVNULL,
                                stderr=open(tmp / "sshd.log", "wb"), start_new_session=True)
        _wait_for_sshd(sshd, port, tmp / "sshd.log")
        yield dev
    finally:
        if sshd is not None:
            sshd.kill()
            sshd.wait()
        _kill_chrooted(tmp / "root")
        _unmount_all(mounts)
        shutil.rmtree(tmp, ignore_errors=True)


def _mount_all(rootfs: Path, tmp: Path, mounts: list[Path]) -> Path:
    """overlay(rootfs) at tmp/root, then proc, /dev, /dev/pts. /sys stays out: ORT crashes on it."""
    root = tmp / "root"
    for d in ("upper", "work", "root"):
        (tmp / d).mkdir()
    plan = [(["-t", "overlay", "overlay", "-o", f"lowerdir={rootfs},upperdir={tmp}/upper,"
              f"workdir={tmp}/work"], root),
            (["-t", "proc", "proc"], root / "proc"),
            (["--bind", "/dev"], root / "dev"),
            (["--bind", "/dev/pts"], root / "dev/pts")]
    for args, target in plan:
        if target.is_symlink():  # mount would follow it out of the device, onto the host
            raise DeviceError(f"{target} is a symlink: delete the cache {rootfs} and rebuild")
        target.mkdir(parents=True, exist_ok=True)
        _run(["mount", *args, str(target)], "needs root and overlayfs (modprobe overlay)")
        mounts.append(target)
    for d, mode in (("run/sshd", 0o755), ("run/emu", 0o700), ("tmp", 0o1777)):
        (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / d, mode)
    return root


def _unmount_all(mounts: list[Path]) -> None:
    for target in reversed(mounts):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)  # busy: detach
    mounts.clear()


def _kill_chrooted(root: Path) -> None:
    """Kill every process whose / is this device (ssh sessions outlive sshd with setsid)."""
    for pid_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if os.readlink(pid_dir / "root") == str(root):
                os.kill(int(pid_dir.name), 9)


def _write_keys(tmp: Path, root: Path, port: int) -> Device:
    """Host key and client key (ed25519), sshd_config, known_hosts; device side under /run/emu."""
    emu = root / "run/emu"
    for name in ("host_key", "client_key"):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(tmp / name)],
             "apt-get install openssh-client")
    shutil.copy(tmp / "host_key", emu / "ssh_host_ed25519_key")
    shutil.copy(tmp / "client_key.pub", emu / "authorized_keys")
    (emu / "sshd_config").write_text(SSHD_CONFIG.format(port=port))
    line = f"[127.0.0.1]:{port} " + " ".join((tmp / "host_key.pub").read_text().split()[:2])
    (tmp / "known_hosts").write_text(line + "\n")
    return Device("127.0.0.1", port, "root", tmp / "client_key", line, tmp / "known_hosts", root)


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey /run/emu/ssh_host_ed25519_key
PidFile /run/emu/sshd.pid
AuthorizedKeysFile /run/emu/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
"""


def _wait_for_sshd(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60) -> None:
    """Until the port answers with an SSH banner (sshd under qemu takes a second or two)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            last = (log.read_text().strip().splitlines() or ["(empty log)"])[-1]
            raise DeviceError(f"sshd in the emulated device exited ({proc.returncode}): {last}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.settimeout(5)
            if s.recv(64).startswith(b"SSH-"):
                return
        time.sleep(0.2)
    raise DeviceError(f"sshd did not answer on 127.0.0.1:{port} within {timeout:.0f}s; see {log}")


def check(device: Device, packages) -> list[str]:
    """Import each runtime on the device over ssh; returns the lines printed, raises on failure."""
    names = ["numpy"] + [n for n in CHECK_IMPORTS if n != "numpy" and
                         any(re.split(r"[<>=!~\[; ]", p)[0] == n for p in packages)]
    lines = []
    for name in names:
        cmd = f"TVM_USE_RUNTIME_LIB=1 python3 -c \"{CHECK_IMPORTS[name]}\""
        p = device.ssh(cmd)
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            raise DeviceError(f"{name} does not import on the emulated device: {last}")
        lines.append(p.stdout.strip())
    return lines


def _control():
    """tools/emulated_control.py (start/stop/serve), loaded by path: tools/ is not a package."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("emulated_control",
                                                  Path(__file__).with_name("emulated_control.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("verb", choices=["build", "start", "stop", "check", "serve"])
    ap.add_argument("--packages", default=",".join(DEFAULT_PACKAGES),
                    help="comma-separated pip requirements for the device ('' for none)")
    ap.add_argument("--port", type=int, default=0, help="sshd port on 127.0.0.1 (0: a free one)")
    ap.add_argument("--state", help="folder for start/stop: pid, ssh_config, key (default: the cache's run/)")
    args = ap.parse_args(argv)
    packages = [p for p in args.packages.split(",") if p]
    ctl = _control()
    me, state = sys.modules[__name__], ctl.state_dir(sys.modules[__name__], args.state)
    try:
        if args.verb in ("start", "stop", "serve"):
            do = {"start": lambda: ctl.start(me, packages, args.port, state),
                  "stop": lambda: ctl.stop(me, state),
                  "serve": lambda: ctl.serve(me, packages, args.port, state)}[args.verb]
            print(do(), flush=True)
            return 0
        t0 = time.monotonic()
        rootfs = build_rootfs(packages=packages)
        print(f"rootfs {rootfs} ({time.monotonic() - t0:.1f}s)")
        if args.verb == "check":
            with start_device(rootfs, args.port) as dev:
                print("\n".join(check(dev, packages)))
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

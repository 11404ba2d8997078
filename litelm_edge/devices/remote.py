"""One SSH connection to a device: open it the way `ssh` would, run commands with a timeout.

Opening follows ~/.ssh/config as OpenSSH resolves it, Include and all (devices/ssh_config.py: HostName,
User, Port, IdentityFile, ProxyJump, ProxyCommand, UserKnownHostsFile), takes
keys from the agent and from files, and checks the host key against known_hosts: an unknown key is
refused (never a silent AutoAddPolicy) unless the caller passes accept_new=True, which records it.

Every remote command is a list of arguments, each shell-quoted, run under `setsid` so the whole
process group can be killed on timeout or Ctrl-C: nothing is left running on the device.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import logging
import os
import re
import select
import shlex
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import UserError
from .runner import EXIT_DEVICE

# paramiko's transport thread logs socket errors; with no handler Python would print them to
# stderr beside our one-line error. Callers that want them can still attach a handler.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CONNECT_TIMEOUT = 15.0  # s, TCP connect + banner + auth, each
KILL_GRACE = 1.0  # s between SIGTERM and SIGKILL of a remote process group


class _Timeout(Exception):
    pass


class _Cancelled(Exception):
    pass


@contextlib.contextmanager
def _ctrl_c_sets(flag: threading.Event):
    """While a remote command streams, Ctrl-C only sets `flag`; the loop turns it into a
    KeyboardInterrupt at a point of its own choosing. Raised anywhere else, it can land inside
    paramiko between a lock's acquire and its try (left held: the transport thread then blocks, and
    so does the kill of the remote group that follows, seen as a CLI that ignores Ctrl-C for 20+ s
    once in a CI run). Only the main thread can own the handler; other threads stop on `cancel`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


class RemoteError(UserError):
    """A device or transport fault: one line naming the problem and the fix; the CLI exits 3."""

    exit_code = EXIT_DEVICE


@dataclass
class Completed:
    rc: int
    stdout: str
    stderr: str


def valid_hostname(s: str) -> bool:
    """OpenSSH's rule (misc.c valid_hostname): no leading '-', no shell metacharacters, spaces
    or control characters. A ProxyCommand expands %h into a shell command: this keeps it inert."""
    return bool(s) and not s.startswith("-") and not any(
        c in "'`\"$\\;&<>|(){}," or c.isspace() or not c.isprintable() for c in s)


def valid_user(s: str) -> bool:
    """OpenSSH's rule (misc.c valid_ruser): no leading '-', control characters, shell
    metacharacters, '-' after a space, or a trailing backslash."""
    return bool(s) and not s.startswith("-") and not s.endswith("\\") and not re.search(r"\s-", s) and not any(
        c in "'`\";&<>|(){}" or not c.isprintable() for c in s)


def parse_address(address: str) -> tuple[str | None, str, int | None]:
    """'pi@host:2222' -> ('pi', 'host', 2222); user and port are None when not given.
    Host and user must pass OpenSSH's own checks: they are refused before any connection."""
    m = re.fullmatch(r"(?:([^@\s]+)@)?(\[[^\]]+\]|[^:@\s]+)(?::(\d+))?", address.strip())
    if not m:
        raise UserError(f"bad --remote '{address}': expected user@host[:port]")
    user, host, port = m.groups()
    host = host.strip("[]")
    if not valid_hostname(host):
        raise UserError(f"bad --remote '{address}': host name {host!r} has characters OpenSSH refuses "
                        "(shell metacharacters, spaces, a leading '-'): use the device's name or address")
    if user is not None and not valid_user(user):
        raise UserError(f"bad --remote '{address}': user name {user!r} has characters OpenSSH refuses")
    if port and not 0 < int(port) < 65536:
        raise UserError(f"bad --remote '{address}': port {port} is not 1-65535")
    return user, host, int(port) if port else None


def fingerprint(key) -> str:
    """OpenSSH-style 'SHA256:...' fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_hosts() -> Path:
    return Path("~/.ssh/known_hosts").expanduser()


def _host_key_policy(accept_new: bool, record: Path | None = None):
    """record: where an accepted key is written (OpenSSH: the first UserKnownHostsFile)."""
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            if not accept_new:
                raise RemoteError(
                    f"unknown host key for {hostname} ({key.get_name()} {fingerprint(key)}): "
                    "check it on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), "
                    "then rerun with --accept-new-host-key")
            path = record or _known_hosts()
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            client.get_host_keys().add(hostname, key.get_name(), key)

    return Policy()


def ssh_config_path() -> Path:
    """The ssh config read, like `ssh -F`: --ssh-config ($LITELM_EDGE_SSH_CONFIG), else ~/.ssh/config."""
    given = os.environ.get("LITELM_EDGE_SSH_CONFIG")
    if given and not Path(given).expanduser().is_file():
        raise UserError(f"--ssh-config {given}: no such file: pass the file that "
                        "`tools/emulated_device.py start` (or you) wrote")
    return Path(given or "~/.ssh/config").expanduser()


def _lookup(alias: str) -> dict:
    """ssh config entry for a host alias, resolved as OpenSSH does, Include and all (ssh -G where
    ssh is installed, else a documented subset: devices/ssh_config.py); "_origins" names the file
    and line of each value."""
    from .ssh_config import resolve
    return resolve(alias, ssh_config_path())


def _client(accept_new: bool, known_hosts: str = ""):
    """known_hosts: the config's UserKnownHostsFile (space-separated), read beside the usual files."""
    import paramiko

    client = paramiko.SSHClient()
    extra = [Path(p).expanduser() for p in known_hosts.split()]
    for p in (Path("/etc/ssh/ssh_known_hosts"), _known_hosts(), *extra):
        if p.is_file():
            client.load_system_host_keys(str(p))
    client.set_missing_host_key_policy(_host_key_policy(accept_new, extra[0] if extra else None))
    return client


def _connect_one(address: str, accept_new: bool, sock=None, timeout=CONNECT_TIMEOUT):
    """Open one hop; returns (client, label). sock is a channel through the previous hop."""
    import paramiko

    user, alias, port = parse_address(address)
    cfg = _lookup(alias)
    host = cfg.get("hostname", alias)
    port = port or int(cfg.get("port", 22))
    user = user or cfg.get("user") or os.environ.get("USER") or "root"
    label = f"{user}@{host}:{port}"
    if sock is None and cfg.get("proxycommand"):
        sock = paramiko.ProxyCommand(cfg["proxycommand"])
    keys = [os.path.expanduser(k) for k in cfg.get("identityfile", [])]
    client = _client(accept_new, cfg.get("userknownhostsfile", ""))
    try:
        client.connect(host, port=port, username=user, key_filename=keys or None, sock=sock,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       allow_agent=True, look_for_keys=True)
    except RemoteError:
        client.close()
        raise
    except Exception as e:  # every failure becomes one line naming the fix
        client.close()
        from .ssh_config import origins_note
        raise RemoteError(_connect_message(e, label, keys) + origins_note(cfg)) from e
    client.get_transport().set_keepalive(15)
    return client, label, cfg


def _connect_message(e: Exception, label: str, keys: list[str]) -> str:
    import paramiko

    if isinstance(e, paramiko.BadHostKeyException):
        host, port = label.split("@", 1)[1].rsplit(":", 1)
        host = host if port == "22" else f"[{host}]:{port}"  # as known_hosts names it
        return (f"host key for {host} CHANGED ({fingerprint(e.key)}, known_hosts has "
                f"{fingerprint(e.expected_key)}): if the device was reinstalled, remove the old "
                f"key with ssh-keygen -R '{host}'")
    if isinstance(e, paramiko.PasswordRequiredException):
        return f"{label}: the key is passphrase-protected: load it into ssh-agent with ssh-add"
    if isinstance(e, paramiko.SSHException) and "No authentication methods available" in str(e):
        return (f"{label}: no usable SSH key (none in ssh-agent, no ~/.ssh/id_*, no IdentityFile): "
                "make one with ssh-keygen -t ed25519, then ssh-copy-id it to the device")
    if isinstance(e, (FileNotFoundError, IsADirectoryError)) and keys:
        return f"{label}: IdentityFile {e.filename or keys[0]} cannot be read: fix IdentityFile in ~/.ssh/config"
    if isinstance(e, paramiko.SSHException) and ("private key" in str(e) or "key format" in str(e)):
        return (f"{label}: the SSH key cannot be read ({e}): point IdentityFile at a private key "
                "(not the .pub) or make one with ssh-keygen -t ed25519")
    if isinstance(e, paramiko.AuthenticationException):
        tried = ", ".join(keys) if keys else "agent and ~/.ssh/id_*"
        return (f"{label}: authentication failed (tried {tried}): add your public key to "
                "~/.ssh/authorized_keys on the device or set IdentityFile in ~/.ssh/config")
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError) or \
            isinstance(e, ConnectionRefusedError):
        return f"{label}: connection refused: is sshd running on the device and is the port right?"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"{label}: connection timed out: check the address and the network"
    if isinstance(e, socket.gaierror):
        return f"{label}: unknown host: check the name or add it to ~/.ssh/config"
    return f"{label}: cannot connect ({type(e).__name__}: {e}): check the device and retry"


def _tunnel(client, address: str):
    """A direct-tcpip channel from an open hop to the next address, used as its socket."""
    _, alias, port = parse_address(address)
    cfg = _lookup(alias)
    dest = (cfg.get("hostname", alias), port or int(cfg.get("port", 22)))
    try:
        return client.get_transport().open_channel("direct-tcpip", dest, ("127.0.0.1", 0),
                                                   timeout=CONNECT_TIMEOUT)
    except Exception as e:
        raise RemoteError(f"jump host cannot reach {dest[0]}:{dest[1]} ({e}): check ProxyJump "
                          "in ~/.ssh/config") from e


class Remote:
    """An open connection to a device; use as a context manager."""

    def __init__(self, address: str, accept_new: bool = False, timeout: float = CONNECT_TIMEOUT):
        self.hops = []  # jump clients, closed after us
        _, alias, _ = parse_address(address)
        jumps = [h for h in _lookup(alias).get("proxyjump", "").split(",") if h and h != "none"]
        chain, sock = [*jumps, address], None
        for hop, nxt in itertools.pairwise(chain):  # each hop tunnels to the next one
            client, _, _ = _connect_one(hop, accept_new, sock, timeout)
            self.hops.append(client)
            sock = _tunnel(client, nxt)
        self.client, self.label, _ = _connect_one(address, accept_new, sock, timeout)
        self._sftp = None
        self.cancel = None  # a threading.Event: when set, a running command is killed (fleet Ctrl-C)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for c in [self.client, *reversed(self.hops)]:
            c.close()

    @property
    def sftp(self):
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def alive(self) -> bool:
        t = self.client.get_transport()
        return t is not None and t.is_active()

    def run(self, argv: list[str], timeout: float, on_line=None, check: bool = True,
            what: str | None = None) -> Completed:
        """Run argv (each item shell-quoted) with a deadline; kill its process group on expiry.

        on_line gets each stderr line as it comes; `what` names the command in errors.
        """
        what = what or argv[0]
        inner = 'echo "@pgid $$" >&2; exec "$@"'
        cmd = f"setsid -w sh -c {shlex.quote(inner)} sh {shlex.join(argv)}"
        try:
            rc, out, err = self._stream(cmd, timeout, on_line)
        except _Timeout:
            raise RemoteError(f"{self.label}: {what} exceeded its {timeout:g} s timeout and "
                              "was killed: raise --timeout if the device is only slow") from None
        except _Cancelled:
            raise RemoteError(f"{self.label}: interrupted; {what} was stopped on the device"
                              ) from None
        except (OSError, EOFError) as e:
            raise RemoteError(f"{self.label}: connection lost while running {what} ({e}): "
                              "check the device and retry") from e
        if check and rc != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {rc}"
            raise RemoteError(f"{self.label}: {shlex.join(argv)[:120]} failed: {last}")
        return Completed(rc, out, err)

    def _stream(self, cmd: str, timeout: float, on_line) -> tuple[int, str, str]:
        """Collect stdout, pass stderr lines to on_line as they come; kill the group on expiry."""
        chan = self.client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
        chan.exec_command(cmd)
        out, err, buf, pgid = bytearray(), [], b"", None
        deadline = time.monotonic() + timeout
        interrupted = threading.Event()
        with _ctrl_c_sets(interrupted):  # a second Ctrl-C while the group is killed changes nothing
            try:
                while True:
                    if interrupted.is_set():  # checked first: a chatty command starves none of the three
                        raise KeyboardInterrupt
                    if self.cancel is not None and self.cancel.is_set():
                        raise _Cancelled
                    if time.monotonic() > deadline:
                        raise _Timeout
                    if chan.recv_ready():
                        out += chan.recv(65536)
                    elif chan.recv_stderr_ready():
                        buf += chan.recv_stderr(65536)
                        *lines, buf = buf.split(b"\n")
                        for line in (x.decode(errors="replace") for x in lines):
                            if pgid is None and line.startswith("@pgid "):
                                pgid = int(line[6:])
                            else:
                                err.append(line)
                                on_line and on_line(line)
                    elif chan.exit_status_ready():
                        break
                    elif not self.alive():
                        raise EOFError("connection closed")
                    else:
                        select.select([chan], [], [], 0.02)
            except (KeyboardInterrupt, _Timeout, _Cancelled):
                if pgid:
                    self.kill_group(pgid)
                chan.close()
                raise
        err.append(buf.decode(errors="replace"))
        return chan.recv_exit_status(), out.decode(errors="replace"), "\n".join(err)

    def kill_group(self, pgid: int):
        """SIGTERM then SIGKILL the remote process group; best effort on a live connection."""
        if not self.alive():
            return
        script = (f"kill -TERM -- -{pgid} 2>/dev/null || exit 0; sleep {KILL_GRACE}; "
                  f"kill -KILL -- -{pgid} 2>/dev/null; exit 0")
        _, stdout, _ = self.client.exec_command(script, timeout=10)
        stdout.channel.status_event.wait(10 + KILL_GRACE)  # bounded, like every remote step

"""A host's ssh configuration resolved the way OpenSSH does, with the file that gave each value.

paramiko's SSHConfig ignores `Include`: a host defined in an included file resolved to port 22 as
the local user, silently. So the values come from OpenSSH itself, `ssh -G -F CONFIG HOST` (every
directive, Match and token as ssh would use them), wherever an ssh client is installed. Without
one, a documented subset is read here:

- `Host` patterns (`*`, `?`, `!negation`), `Match all` and `Match host PATTERNS` (other Match
  criteria never match: they need ssh to evaluate);
- `Include` (globs; a relative path is under ~/.ssh, as OpenSSH reads the user's config; nested up
  to 16 deep; inside a Host block it applies only when the block does);
- the first value of each key wins, IdentityFile accumulates; `%h` and `%%` expand in HostName.

Either way the subset's reading says where each value came from (FILE:LINE), which connection
errors quote: "Port from /home/me/.ssh/conf.d/pi.conf:3".
"""
from __future__ import annotations

import fnmatch
import glob
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from ..config import UserError

KEYS = ("hostname", "user", "port", "identityfile", "identitiesonly", "proxyjump", "proxycommand",
        "userknownhostsfile", "stricthostkeychecking")  # what devices/remote.py uses
MAX_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
# what ssh -G lists when no IdentityFile is configured: paramiko's look_for_keys tries these itself
DEFAULT_IDS = {f"~/.ssh/id_{k}" for k in ("rsa", "ecdsa", "ecdsa_sk", "ed25519", "ed25519_sk", "xmss", "dsa")}


def _tokens(line: str, where: str) -> tuple[str, list[str]]:
    """'Key value', 'Key=value' or 'Key = value'; arguments may be double-quoted."""
    key, _, rest = re.sub(r"^(\S+?)\s*(=\s*|\s+)", r"\1 ", line.strip(), count=1).partition(" ")
    try:
        return key.lower(), shlex.split(rest)
    except ValueError as e:
        raise UserError(f"{where}: {e}: fix the ssh config") from None


def _match(name: str, patterns: list[str]) -> bool:
    """OpenSSH's match_hostname_list: a negated pattern that matches wins, else any positive one."""
    pats = [p for item in patterns for p in item.split(",") if p]
    if any(p.startswith("!") and fnmatch.fnmatchcase(name, p[1:]) for p in pats):
        return False
    return any(not p.startswith("!") and fnmatch.fnmatchcase(name, p) for p in pats)


def _include(arg: str, home: Path) -> list[Path]:
    path = Path(arg).expanduser()
    path = path if path.is_absolute() else home / ".ssh" / path
    return [Path(p) for p in sorted(glob.glob(str(path)))]


def read(alias: str, path: Path) -> tuple[dict, dict]:
    """(values, origins) of `alias` from the config at `path` and its Includes (the subset above)."""
    values, origins = {}, {}
    home = Path("~").expanduser()

    def walk(file: Path, active: bool, depth: int):
        if depth > MAX_DEPTH:
            raise UserError(f"{file}: Include nested more than {MAX_DEPTH} deep: fix the ssh config")
        for n, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            if not line.strip() or line.strip().startswith("#"):
                continue
            key, args = _tokens(line, f"{file}:{n}")
            if key == "host":
                active = _match(alias, args)
            elif key == "match":
                host = values.get("hostname", alias)
                active = args[:1] == ["all"] or (args[:1] == ["host"] and _match(host, args[1:]))
            elif key == "include":
                for f in (p for a in args for p in _include(a, home)):
                    walk(f, active, depth + 1)  # its Host lines reset activity inside it only
            elif active and key in KEYS and args:
                if key == "identityfile":
                    values.setdefault(key, []).append(" ".join(args))
                    origins.setdefault(key, f"{file}:{n}")
                elif key not in values:
                    values[key], origins[key] = " ".join(args), f"{file}:{n}"

    walk(path, True, 0)
    if "hostname" in values:
        values["hostname"] = values["hostname"].replace("%h", alias).replace("%%", "%")
    return values, origins


def ssh_g(alias: str, path: Path) -> dict | None:
    """OpenSSH's own resolution (`ssh -G -F path alias`); None when no ssh client is installed."""
    ssh = shutil.which("ssh")
    if ssh is None:
        return None
    try:
        r = subprocess.run([ssh, "-G", "-F", str(path), "--", alias], capture_output=True, text=True,
                           timeout=15, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"ssh -G exited {r.returncode}"])[-1]
        raise UserError(f"{path}: {last}: fix the ssh config (ssh -G -F {path} {alias} shows what ssh reads)")
    out = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "identityfile":
            out.setdefault(key, []).append(value)
        elif key in KEYS and value != "none":
            out[key] = value
    return out


def resolve(alias: str, path: Path) -> dict:
    """The values devices/remote.py connects with (paramiko's lookup() keys: identityfile a list),
    plus "_origins": {key: "FILE:LINE", or "ssh -G" for ssh's defaults and what the subset does not
    read} and "_by": "ssh -G" | "subset" | "no config"."""
    if not path.is_file():
        return {"hostname": alias, "_origins": {}, "_by": "no config"}
    parsed, origins = read(alias, path)
    given = ssh_g(alias, path)
    if given is None:
        return {"hostname": alias, **parsed, "_origins": origins, "_by": "subset"}
    ids = [i for i in given.get("identityfile", []) if i not in DEFAULT_IDS or i in parsed.get("identityfile", [])]
    given = {k: v for k, v in given.items() if k != "identityfile"} | ({"identityfile": ids} if ids else {})
    # a value the subset read identically names its line; any other is ssh's (a default, Match exec, ...)
    found = {k: origins[k] if parsed.get(k) == v else "ssh -G" for k, v in given.items()}
    return {**given, "_origins": found, "_by": "ssh -G"}


def origins_note(cfg: dict) -> str:
    """' [ssh config (ssh -G): port from FILE:3, user from FILE:4]' for the values a file gave, else ''."""
    given = [f"{k} from {o}" for k, o in cfg.get("_origins", {}).items() if o != "ssh -G"]
    return f" [ssh config ({cfg.get('_by')}): {', '.join(given)}]" if given else ""

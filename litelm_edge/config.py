"""Config in one place: dataclasses with commented defaults, overridden by TOML, then by --set.

Data folders (targets/, model/, recipes/) live at the top level of the repo and are shipped inside
the wheel as litelm_edge/_data/; `data_dir` finds whichever exists.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path


class UserError(Exception):
    """A bad input: the CLI prints the message as one line and exits 2."""


def cache_dir() -> Path:
    """$LITELM_EDGE_CACHE, default ~/.cache/litelm-edge: corpus, toolchain venvs, emulated devices."""
    return Path(os.environ.get("LITELM_EDGE_CACHE") or Path.home() / ".cache" / "litelm-edge")


def data_dir(kind: str) -> Path:
    """Folder of shipped TOML data: kind is 'targets', 'model' or 'recipes'."""
    here = Path(__file__).resolve().parent
    for d in (here / "_data" / kind, here.parent / kind):
        if d.is_dir():
            return d
    raise UserError(f"data folder '{kind}' not found beside {here}: reinstall litelm-edge")


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed TOML ({e}): fix the syntax and retry") from e


def named_toml(kind: str, name: str) -> tuple[Path, dict]:
    """A TOML in a data folder by name ('rpi4') or by path ('./my_board.toml')."""
    p = Path(name)
    if p.suffix == ".toml" and p.is_file():
        return p, read_toml(p)
    d = data_dir(kind)
    p = d / f"{name}.toml"
    if not p.is_file():
        have = ", ".join(sorted(x.stem for x in d.glob("*.toml")))
        raise UserError(f"unknown {kind.rstrip('s')} '{name}', have: {have}")
    return p, read_toml(p)


def _coerce(value, typ, key: str):
    """Type-check one value against a dataclass field type; strings (from --set) are parsed."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or value == "none":
            return None
        typ = args[0]
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            return value
        elif isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(typ) is list or typ is list:
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [v for v in value.split(",") if v]
    else:
        return value
    raise UserError(f"'{key}' must be {getattr(typ, '__name__', typ)}, got {value!r}")


def override(obj, values: dict, where: str = "config"):
    """Return a copy of dataclass `obj` with `values` applied; unknown keys are an error."""
    hints = typing.get_type_hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for k, v in values.items():
        if k not in fields:
            raise UserError(f"unknown key '{k}' in {where}, have: {', '.join(sorted(fields))}")
        changes[k] = _coerce(v, hints[k], k)
    return dataclasses.replace(obj, **changes)


def parse_sets(sets: typing.Iterable[str]) -> dict:
    """['lr=1e-3', 'model.n_layer=2'] -> {'lr': '1e-3', 'model.n_layer': '2'}"""
    out = {}
    for s in sets:
        if "=" not in s:
            raise UserError(f"--set '{s}' is not key=value")
        k, v = s.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def split_sets(sets: dict, prefix: str) -> tuple[dict, dict]:
    """Split {'model.n_layer': 2, 'lr': 1} by prefix -> ({'n_layer': 2}, {'lr': 1})."""
    mine = {k[len(prefix) + 1:]: v for k, v in sets.items() if k.startswith(prefix + ".")}
    rest = {k: v for k, v in sets.items() if not k.startswith(prefix + ".")}
    return mine, rest

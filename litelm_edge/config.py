"""Config in one place: dataclasses with commented defaults, overridden by TOML, then by --set.

The one schema mechanism for every TOML and JSON a user writes or edits (targets, recipes, model
presets, inventories, checkpoint config.json): `from_dict(Cls, table, where)` builds a dataclass
from a table, nested dataclasses included. Unknown keys are errors that name the nearest valid key,
values are coerced and type-checked, and a dataclass's `validate()` range-checks the whole.

Data folders (targets/, model/, recipes/) live at the top level of the repo and are shipped inside
the wheel as litelm_edge/_data/; `data_dir` finds whichever exists.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a config dataclass


class UserError(Exception):
    """A bad input: the CLI prints the message as one line and exits 2."""


def cache_dir() -> Path:
    """$LITELM_EDGE_CACHE, default ~/.cache/litelm-edge: corpus, toolchain venvs, emulated devices."""
    return Path(os.environ.get("LITELM_EDGE_CACHE") or Path.home() / ".cache" / "litelm-edge")


def data_dir(kind: str) -> Path:
    """Folder of shipped data: 'targets', 'model', 'recipes' (TOML) or 'tools' (the CI scripts the
    workflow runs: ci_device.py, emulated_device.py); in a wheel under _data/, else the checkout's."""
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


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Type-check one value against a dataclass field type; strings (from --set) are parsed."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or value == "none":
            return None
        for a in args[:-1]:  # str | dict: the first member that takes the value
            try:
                return _coerce(value, a, key)
            except UserError:
                pass
        typ = args[-1]
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
        try:
            x = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
        except (ValueError, OverflowError):  # OverflowError: an int beyond a float
            x = None
        if x is not None and not math.isfinite(x):  # nan passes every range check (nan < 0 is false)
            raise UserError(f"'{key}' must be a finite number, got {value!r}")
        if x is not None:
            return x
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is dict:
        if isinstance(value, dict):
            return _finite(value, key)
    elif typing.get_origin(typ) is list or typ is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            item = (typing.get_args(typ) or (None,))[0]
            return [_coerce(v, item, key) for v in value] if item in (int, float, str) else value
    else:
        return value
    raise UserError(f"'{key}' must be {getattr(typ, '__name__', typ)}, got {value!r}")


def _finite(value: Any, key: str) -> Any:
    """A free-form table (a backend's settings) holds no nan or inf at any depth either."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"'{key}' must hold finite numbers, got {value!r}")
    for k, v in (value.items() if isinstance(value, dict)
                 else enumerate(value) if isinstance(value, list) else ()):
        _finite(v, f"{key}.{k}")
    return value


def unknown_key(key: str, have: typing.Iterable[str], where: str, what: str = "key") -> UserError:
    """'unknown key 'precison' in [build]: did you mean 'precision'?' (else the valid keys)."""
    have = sorted(have)
    near = difflib.get_close_matches(key, have, n=1, cutoff=0.6)
    hint = f"did you mean '{near[0]}'?" if near else f"have: {', '.join(have) or '(none)'}"
    return UserError(f"unknown {what} '{key}' in {where}: {hint}")


def _validated(obj: T, where: str) -> T:
    """Run the dataclass's own range checks, naming where the values came from."""
    check = getattr(obj, "validate", None)
    if check is None:
        return obj
    try:
        check()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return obj


def at_least(obj: Any, **limits: float) -> None:
    """Range check: at_least(cfg, n_layer=1, eval_every=1); None means "not set" and passes."""
    for k, lo in limits.items():
        v = getattr(obj, k)
        if v is not None and v < lo:
            raise UserError(f"'{k}' must be >= {lo}, got {v}")


def override(obj: T, values: dict, where: str = "config") -> T:
    """Return a copy of dataclass `obj` with `values` applied; unknown keys are an error."""
    hints = typing.get_type_hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for k, v in values.items():
        if k not in fields:
            raise unknown_key(k, fields, where)
        changes[k] = _coerce(v, hints[k], k)
    return _validated(dataclasses.replace(obj, **changes), where)


def _key_of(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)  # a TOML key that is a Python keyword: from -> from_


def _value(value: Any, typ: Any, where: str, key: str) -> Any:
    """One table value against a field type: nested dataclasses and lists of them recurse."""
    if dataclasses.is_dataclass(typ) and isinstance(typ, type):
        return from_dict(typ, value, f"{where} [{key}]")
    if typing.get_origin(typ) is list and dataclasses.is_dataclass(typing.get_args(typ)[0]):
        if not isinstance(value, list):
            raise UserError(f"{where}: write [{key}] as an array of tables ([[{key}]]), got {value!r}"[:200])
        item = typing.get_args(typ)[0]
        return [from_dict(item, v, f"{where} [[{key}]] #{i + 1}") for i, v in enumerate(value)]
    try:
        return _coerce(value, typ, key)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """A dataclass `cls` from table `data` (TOML or JSON): strict keys, coerced values, validated."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a table of keys, got {type(data).__name__} {data!r}"[:200])
    hints = typing.get_type_hints(cls)
    fields = {_key_of(f): f for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in data.items():
        if k not in fields:
            raise unknown_key(k, fields, where)
        kw[fields[k].name] = _value(v, hints[fields[k].name], where, k)
    for k, f in fields.items():
        if f.name not in kw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{where} needs '{k}'")
    return _validated(cls(**kw), where)


def to_dict(obj: Any) -> dict:
    """A dataclass as a plain table, without the keys left unset (None)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        return [plain(x) for x in v] if isinstance(v, list) else v
    return {_key_of(f): plain(v) for f in dataclasses.fields(obj) if (v := getattr(obj, f.name)) is not None}


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

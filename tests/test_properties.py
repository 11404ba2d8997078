"""Issue 23, "prove it keeps holding": Hypothesis over the config schema, the manifest reader and
verify, and the host-name parser. The property: random and mutated inputs end in a UserError (the
CLI's one line, exit 2) or a valid value, never another exception (the CLI's exit 70 and a crash
log); a mutated manifest never loads, and a re-sealed one loads only when every file it names is
listed, inside the folder and hash-matched.

Example counts are modest (the EXAMPLES profile below, derandomized so a CI run is repeatable and
writes no .hypothesis/ database); `HYPOTHESIS_PROFILE=deep` runs 20x more by hand.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
import tomllib
from pathlib import Path
from unittest import mock

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from fake_artifact import make_artifact  # noqa: E402
from litelm_edge import config as C, manifest as mf  # noqa: E402
from litelm_edge.config import UserError  # noqa: E402

settings.register_profile("ci", max_examples=1, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("deep", parent=settings.get_profile("ci"), derandomize=False)
DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
EXAMPLES = {"schema": 300, "mutated_toml": 200, "override": 300, "manifest": 150, "resealed": 150,
            "hostname": 500}  # per test; recorded in the closing note


def examples(name: str):
    return settings(settings.get_profile("deep" if DEEP else "ci"),
                    max_examples=EXAMPLES[name] * (20 if DEEP else 1))


ROOT = Path(__file__).resolve().parents[1]
# JSON/TOML-like values, nan and inf included: what a hand-edited file or a --set can hold
leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
          | st.text(max_size=12) | st.sampled_from(["nan", "inf", "-inf", "1e999", "none", "true", "0", "-1",
                                                    ""]))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                      max_leaves=8)


def schema_classes():
    from litelm_edge.devices.fleet import Device
    from litelm_edge.flows import recipe
    from litelm_edge.pipeline import data, eval as ev
    from litelm_edge.pipeline.model import ModelConfig
    from litelm_edge.pipeline.train import TrainConfig
    from litelm_edge.target import TABLES, TargetInfo
    return [TrainConfig, ModelConfig, ev.EvalConfig, data.DataConfig, recipe.Recipe, recipe.BenchStep,
            recipe.CompressStep, TargetInfo, Device, *TABLES.values()]


CLASSES = schema_classes()


def field_keys(cls) -> list[str]:
    return [f.metadata.get("key", f.name) for f in dataclasses.fields(cls)]


@st.composite
def tables(draw):
    """A dataclass and a table for it: mostly its own keys (so values reach the type checks), some
    misspelt or foreign ones, values of any type."""
    cls = draw(st.sampled_from(CLASSES))
    keys = st.sampled_from(field_keys(cls)) | st.text(max_size=10)
    return cls, draw(st.dictionaries(keys, values, max_size=5))


def only_user_errors(fn, *a):
    """fn(*a), or None when it raised UserError; anything else propagates and fails the test."""
    try:
        return fn(*a)
    except UserError:
        return None


@examples("schema")
@given(tables())
def test_the_schema_takes_any_table_without_a_crash(case):
    cls, table = case
    obj = only_user_errors(C.from_dict, cls, table, "fuzz")
    if obj is not None:  # accepted: every float in it is finite, at any depth
        flat = json.dumps(C.to_dict(obj), default=str)
        assert "NaN" not in flat and "Infinity" not in flat, flat


@examples("override")
@given(st.sampled_from(["lr", "max_steps", "beta2", "dtype", "grad_clip", "threads", "n_layer",
                        "rope_theta"]),
       st.text(max_size=12) | st.sampled_from(["nan", "inf", "-1", "1e400", "0x10", "1_000", "", " 3 "]))
def test_set_key_value_never_crashes(key, text):
    from litelm_edge.pipeline.model import ModelConfig
    from litelm_edge.pipeline.train import TrainConfig
    for base in (TrainConfig(), ModelConfig()):
        if key in {f.name for f in dataclasses.fields(base)}:
            only_user_errors(C.override, base, {key: text}, "--set")
        else:
            with pytest.raises(UserError, match="unknown key"):
                C.override(base, {key: text}, "--set")


def mutate(draw, tree):
    """One random edit of a nested table: change, delete or add a key, at any depth."""
    tree = copy.deepcopy(tree)
    node = tree
    while True:
        keys = list(node) if isinstance(node, dict) else []
        if not keys or draw(st.booleans()):
            break
        k = draw(st.sampled_from(keys))
        if not isinstance(node[k], dict):
            break
        node = node[k]
    if not isinstance(node, dict):
        return tree
    op = draw(st.sampled_from(["set", "delete", "add"]) if node else st.just("add"))
    if op == "add":
        node[draw(st.text(min_size=1, max_size=8))] = draw(values)
    else:
        k = draw(st.sampled_from(sorted(node)))
        if op == "delete":
            del node[k]
        else:
            node[k] = draw(values)
    return tree


SHIPPED = {p: tomllib.loads(p.read_text()) for d in ("targets", "recipes") for p in sorted((ROOT / d).glob("*.toml"))}


@examples("mutated_toml")
@given(st.sampled_from(sorted(SHIPPED)), st.data())
def test_mutated_targets_and_recipes_never_crash(path, data):
    from litelm_edge import backends
    from litelm_edge.flows import recipe
    edited = mutate(data.draw, SHIPPED[path])
    kind = path.parent.name
    with mock.patch.object(backends if kind == "targets" else recipe, "named_toml",
                           lambda k, n: (path, copy.deepcopy(edited))):
        only_user_errors(backends.load_target if kind == "targets" else recipe.load_recipe, path.stem)


# ---------------------------------------------------------------------------------------------
# manifests: the host's module and the copy a device loads by path, side by side

def device_manifest_module():
    spec = importlib.util.spec_from_file_location("device_manifest", ROOT / "litelm_edge" / "manifest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DEVICE = device_manifest_module()


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    d = make_artifact(tmp_path_factory.mktemp("prop") / "a", {"decoder.onnx": 300, "decoder.onnx.data": 200,
                                                              "tokenizer.json": 50})
    m = json.loads((d / mf.NAME).read_text())
    m.pop("artifact_id")
    m.update(graphs={"decoder": "decoder.onnx"}, model={"max_seq_len": 128, "vocab_size": 512})
    mf.write(d, m)
    (d.parent / "evil.onnx").write_bytes((d / "decoder.onnx").read_bytes())
    return d


def outcome(mod, art_dir: Path):
    """'ok', or 'refused' (the module's UserError); any other exception fails the test."""
    try:
        m = mod.verified(art_dir)
        for ref in mod.file_refs(m):
            p = mod.graph_path(art_dir, m, ref)
            assert p.resolve().parent == art_dir.resolve() or art_dir.resolve() in p.resolve().parents
        return "ok"
    except mod.UserError:
        return "refused"


def manifest_of(art_dir: Path) -> dict:
    return json.loads((art_dir / mf.NAME).read_text())


def set_graph(m: dict, name):
    m["graphs"] = dict(m["graphs"]) if isinstance(m.get("graphs"), dict) else {}
    m["graphs"]["decoder"] = name


def paths_like():
    return st.sampled_from(["../evil.onnx", "/etc/passwd", "decoder.onnx", "other.onnx", "./decoder.onnx",
                            "a/../decoder.onnx", "decoder.onnx/", "", ".", "tokenizer.json", "manifest.json",
                            "decoder.onnx\0", "C:\\x", "..", "decoder.onnx.data"]) | st.text(max_size=12)


@examples("manifest")
@given(st.data())
def test_a_mutated_manifest_never_loads(art, tmp_path_factory, data):
    """Any edit that is not re-sealed is refused, by the host and by the device copy alike."""
    d = tmp_path_factory.mktemp("m") / "a"
    import shutil
    shutil.copytree(art, d)
    m = manifest_of(d)
    edited = mutate(data.draw, m)
    if data.draw(st.booleans()):
        set_graph(edited, data.draw(paths_like()))
    as_json = data.draw(st.integers(0, 9)) > 0
    raw = json.dumps(edited) if as_json else data.draw(st.text(max_size=40))
    (d / mf.NAME).write_text(raw)
    # an edit the graph's re-set undid (graphs -> None -> the same table) loads, but only as JSON:
    # text in its place never does (found by the deep profile)
    want = "ok" if (raw == json.dumps(m) or (as_json and edited == m)) else "refused"
    assert outcome(mf, d) == outcome(DEVICE, d) == want


@examples("resealed")
@given(st.data())
def test_a_resealed_manifest_loads_only_verified_paths(art, tmp_path_factory, data):
    """The attacker's re-seal: accepted only when every name is listed, inside and hash-matched."""
    import shutil
    d = tmp_path_factory.mktemp("r") / "a"
    shutil.copytree(art, d)
    m = manifest_of(d)
    m.pop("artifact_id")
    edited = mutate(data.draw, m) if data.draw(st.booleans()) else m
    if data.draw(st.booleans()):
        set_graph(edited, data.draw(paths_like()))
    if data.draw(st.booleans()):
        edited[data.draw(st.sampled_from(["tvm", "litert", "graphs"]))] = {"library": data.draw(paths_like())}
    if isinstance(edited.get("files"), dict) and data.draw(st.booleans()):
        edited["files"][data.draw(paths_like())] = data.draw(values)
    try:
        (d / mf.NAME).write_text(json.dumps(dict(edited, artifact_id=mf.artifact_id(edited))))
    except (TypeError, ValueError):  # not JSON-writable (nan is: json writes NaN); skip such draws
        return
    host, device = outcome(mf, d), outcome(DEVICE, d)
    assert host == device


@examples("hostname")
@given(st.text(max_size=30) | st.from_regex(r"(?:[a-z$;`' -]{0,5}@)?(?:\[[^\]]{0,8}\]|[a-z0-9.:;$\- ]{0,12})(?::\d{0,6})?",
                                            fullmatch=True))
def test_the_host_name_parser_never_crashes(address):
    from litelm_edge.devices.remote import parse_address, valid_hostname, valid_user
    try:
        user, host, port = parse_address(address)
    except UserError:
        return
    assert valid_hostname(host) and (user is None or valid_user(user)) and (port is None or 0 < port < 65536)
    assert not any(c in host for c in "$;`'\" |&")

"""The package's shape: the core at the top and one folder per part, the parts in a strict order
(each imports only the parts below it, no exceptions), no import cycles, no module over 400 lines,
target names only in backends, device-side files that import no litelm_edge and run as uploaded,
and every backend one folder with its typed record."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "litelm_edge"
MAX_LINES = 400
MAX_FUNCTION_LINES = 60  # a longer function is a place to split (STYLE.md), not to silence a linter
TARGETS = sorted(p.stem for p in (PKG.parent / "targets").glob("*.toml"))
BACKENDS = sorted(p.parent.name for p in (PKG / "backends").glob("*/__init__.py"))  # a new one is checked too
# The top of litelm_edge/: what every part uses (and the CLI over them all), then the parts.
CORE = {"__init__", "cli", "config", "target", "manifest", "files", "toolchain"}
PARTS = {"pipeline", "backends", "devices", "reports", "flows", "schemas"}  # schemas: JSON Schemas, data
# The floors, bottom first: a module imports only its own floor and those below (README, Layout).
# Backends sit above the pipeline (they convert its model and checkpoint); the flows orchestrate
# everything under them; only the CLI is above the flows.
ORDER = ["core", "schemas", "reports", "devices", "pipeline", "backends", "flows", "cli"]


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The litelm_edge modules `name` imports, at module level or inside functions."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports(n, p, set(mods)) for n, p in mods.items()}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_top_level_holds_only_the_core_and_the_parts():
    """A new module goes into the part it belongs to; the top stays the few modules all parts share."""
    top = {p.stem for p in PKG.glob("*.py")}
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert top == CORE, f"modules at the top of litelm_edge/ that belong in a part: {sorted(top - CORE)}"
    assert folders == PARTS, f"folders: {sorted(folders ^ PARTS)}"
    assert all((PKG / d / "__init__.py").is_file() for d in PARTS)


def test_import_graph_has_no_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail
    g = graph()
    assert cycle(g) is None, " -> ".join(cycle(g))
    assert "litelm_edge.flows.build" in g["litelm_edge.flows.tune"]  # the walk sees function-level imports
    assert "litelm_edge.devices.runner" in g["litelm_edge.devices.bench"]  # and `from . import runner`


def part(name: str) -> str:
    p = name.split(".")
    if name == "litelm_edge.cli":
        return "cli"
    return p[1] if len(p) > 1 and p[1] in PARTS else "core"


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{n} -> {m}" for n, ms in g.items() for m in ms if ORDER.index(part(m)) > ORDER.index(part(n)))


def test_parts_import_only_down_the_floors():
    assert set(ORDER) == PARTS | {"core", "cli"}
    assert upward({"litelm_edge.target": {"litelm_edge.backends"}}) == ["litelm_edge.target -> litelm_edge.backends"]
    assert upward(graph()) == []


def test_no_module_over_the_line_budget():
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert {n: k for n, k in long.items() if k > MAX_LINES} == {}


def test_no_function_over_the_line_budget():
    long = [f"{n}.{f.name}: {f.end_lineno - f.lineno + 1} lines" for n, p in modules().items()
            for f in ast.walk(ast.parse(p.read_text())) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_device_side_files_import_no_litelm_edge():
    """What a device receives needs only numpy and its runtime."""
    mods = modules()
    device = ["litelm_edge.devices.runner", "litelm_edge.devices.facts"] + [
        n for n in mods if re.fullmatch(r"litelm_edge\.backends\.\w+\.runtime", n)]
    assert len(device) >= 5
    for n in device:
        tree = ast.parse(mods[n].read_text())
        names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        names += [node.module or "." for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0]
        assert not [m for m in names if m.startswith("litelm_edge")], n


def test_the_uploaded_runner_finds_facts_and_every_runtime(tmp_path):
    """A device receives bench.runner_files(backend) at the paths they have in the package; there the
    runner (run as a script) imports facts.py beside it and loads backends/<name>/runtime.py."""
    from litelm_edge.backends import names
    from litelm_edge.devices.bench import runner_files
    for b in names():
        for name, src in runner_files(b).items():
            assert src == PKG / name and src.is_file(), name
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, tmp_path / name)
    # sys.path as `python3 devices/runner.py` sets it: the script's folder, no litelm_edge package
    code = ("import sys; sys.path[0] = 'devices'; import runner; print(runner.facts.__file__); "
            "[print(runner.runtime_module(b).__file__) for b in sys.argv[1:]]")
    r = subprocess.run([sys.executable, "-c", code, *names()], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    root = tmp_path.resolve()
    assert r.stdout.split() == [str(root / "devices/facts.py")] + [str(root / f"backends/{b}/runtime.py") for b in names()]


def test_target_names_only_inside_backends():
    """No code outside litelm_edge/backends/ tests a target's name (strings in code, not comments)."""
    assert {"x86", "rpi4", "android"} <= set(TARGETS)
    for n, p in modules().items():
        if n.startswith("litelm_edge.backends"):
            continue
        tree = ast.parse(p.read_text())
        docs = {id(b.body[0].value) for b in ast.walk(tree)
                if isinstance(b, (ast.Module, ast.FunctionDef, ast.ClassDef)) and b.body
                and isinstance(b.body[0], ast.Expr) and isinstance(b.body[0].value, ast.Constant)}
        strings = [c.value for c in ast.walk(tree) if isinstance(c, ast.Constant)
                   and isinstance(c.value, str) and id(c) not in docs]
        assert not [s for s in strings if s in TARGETS], n


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_is_one_folder_with_its_record(name):
    """backends/<name>/: BACKEND (a Backend record), build.py's build(ctx), runtime.py's contract."""
    import dataclasses
    import inspect
    from litelm_edge import backends
    b = backends.load(name)
    assert isinstance(b, backends.Backend) and b.name == name and b.runtime and b.section
    assert b.precisions[0].name == "fp32"  # the baseline parity and energy are judged against
    # and at least one quantised precision; its names are the runtime's own (ort int8, gguf q8_0)
    assert any(p.bits < 32 for p in b.precisions)
    assert all(0 < p.size_ratio <= 1 and p.bits in (4, 8, 32) for p in b.precisions)
    assert dataclasses.is_dataclass(b.settings)
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(b.settings))  # defaults own
    assert b.extra is None or b.extra in (PKG.parent / "pyproject.toml").read_text()
    build = (PKG / "backends" / name / "build.py").read_text()
    assert "def build(ctx: BuildContext) -> BackendBuild:" in build
    rt = runner_runtime(name)
    assert isinstance(rt.Runtime.spins, bool) and rt.PACKAGES and rt.MODULE
    assert list(inspect.signature(rt.default_threads).parameters) == ["manifest"]
    assert rt.default_threads({"backend": name}) is None  # a manifest without the section: no ask


def runner_runtime(name: str):
    from litelm_edge.devices.runner import runtime_module
    return runtime_module(name)


@pytest.mark.parametrize("name", TARGETS)
def test_every_target_loads_with_a_default_precision_its_backend_has(name):
    from litelm_edge import backends
    _, t = backends.load_target(name)  # checks the default against the backend's table
    assert backends.precision(t["target"]["backend"], t["target"]["precision"])


def test_unknown_backend_and_precision_are_one_line_errors():
    from litelm_edge import backends
    from litelm_edge.config import UserError
    assert {"litert", "ort", "tvm"} <= set(BACKENDS)
    with pytest.raises(UserError, match=f"unknown backend 'npu', have: {', '.join(BACKENDS)}$"):
        backends.load("npu")
    with pytest.raises(UserError, match=r"unknown precision 'int4-b64' for tvm, have: fp32, int8, int4-gptq$"):
        backends.precision("tvm", "int4-b64")


def test_docs_print_the_precision_tables():
    from litelm_edge.backends import precisions_markdown
    assert precisions_markdown() in (PKG.parent / "docs" / "backends.md").read_text()


def test_docs_index_lists_every_page():
    docs = PKG.parent / "docs"
    index = (docs / "index.md").read_text()
    assert [p.name for p in sorted(docs.glob("*.md")) if p.name != "index.md" and f"({p.name})" not in index] == []

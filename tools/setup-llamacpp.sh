#!/usr/bin/env bash
# Set up llama.cpp for the gguf target's tests and the llama.cpp benchmarks; idempotent, called
# by tools/setup.sh --dev (so by CI):
#   - llama.cpp built once from the llama-cpp-python sdist (PyPI) under
#     ~/.cache/litelm-edge/llama.cpp/ (benchmarks/_llamacpp.py): llama-simple and the shared
#     libllama / libggml it links
#   - llama-cpp-python from the same sdist, its Python half only (CMAKE_ARGS -DLLAMA_BUILD=OFF:
#     seconds, not a second llama.cpp build), its lib/ linked to that build's libraries: the
#     bindings and the library come from one source tree, so their C structs agree
# Usage: tools/setup-llamacpp.sh [PYTHON]   (PYTHON: the main env's python; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ >/dev/null
fi
# "no-amx": this CPU's ISA from /proc/cpuinfo with AMX left out. A VM may report AMX without letting a
# process use it: the native build's Q8_0 / Q4_0 weights are then repacked for AMX and the first
# matmul dies with SIGILL (measured here), where this build runs everywhere the CPU's flags say.
# llama-simple: what the tests run (it links only libllama, so the build skips llama.cpp's common
# library); the benchmarks build the rest of benchmarks/_llamacpp.py's TARGETS when they need them
built=$("$PY" benchmarks/_llamacpp.py no-amx llama-simple)  # once: ~20 min on 2 busy cores, then cached
read -r sdist bin <<<"$built"
if ! "$PY" -c "import importlib.util as u; assert u.find_spec('llama_cpp')" 2>/dev/null; then
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$PY" -m pip install -q --disable-pip-version-check "$sdist"
fi
pkg=$("$PY" -c "import importlib.util as u; print(u.find_spec('llama_cpp').submodule_search_locations[0])")
mkdir -p "$pkg/lib"
ln -sf "$bin"/lib*.so* "$pkg/lib/"  # again each time: the libraries of the build above, never another's
"$PY" -c "import llama_cpp; print('llama.cpp:', llama_cpp.__version__, 'from', '$bin')"

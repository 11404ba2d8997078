#!/usr/bin/env bash
# Set up the Raspberry Pi (TVM) toolchain; idempotent, called by CI's set-up.
#   - Debian's aarch64 cross compiler (links the Pi library)
#   - the TVM toolchain venv ($LITELM_EDGE_CACHE or ~/.cache/litelm-edge/toolchains/tvm-0.27):
#     torch==2.13.0 first, then apache-tvm==0.27.0.post1 + apache-tvm-ffi==0.1.14.post0
# Usage: tools/setup-tvm.sh [PYTHON]   (PYTHON: the main env's python; default .venv/bin/python,
# which tools/setup.sh makes, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v g++ >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ g++-aarch64-linux-gnu >/dev/null
fi
"$PY" -c "from litelm_edge.backends.tvm import build; print('tvm toolchain:', build.python())"

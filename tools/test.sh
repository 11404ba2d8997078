#!/usr/bin/env bash
# README command 2 (and CI): set up with the test tools, then run the test suite.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh --dev || exit $?
LITELM_EDGE_REQUIRE_TOOLCHAINS=1 .venv/bin/python -m pytest -q -p no:cacheprovider "$@"  # setup.sh made them
rc=$?
[ $rc = 5 ] && { echo "no tests collected"; exit 1; }
exit $rc

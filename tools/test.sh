#!/usr/bin/env bash
# README command 2 (and CI): set up with the test tools, then run the test suite.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh --dev || exit $?
bash tools/lint.sh || { echo "lint failed: fix the lines above (tools/lint.sh)"; exit 1; }
# -rs prints every skip's reason; REQUIRE_TOOLCHAINS makes the run strict: a skip not on the
# allow-list in tests/skips.py fails it (setup.sh made the toolchains; CI is root with binfmt)
LITELM_EDGE_REQUIRE_TOOLCHAINS=1 .venv/bin/python -m pytest -q -rs -p no:cacheprovider "$@"
rc=$?
[ $rc = 5 ] && { echo "no tests collected"; exit 1; }
exit $rc

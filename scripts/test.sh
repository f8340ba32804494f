#!/usr/bin/env bash
# Run the test suite in .venv (set up first if needed). Arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not slow"      bash scripts/test.sh tests/test_runs.py -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --dev: the test tools (pytest, playwright, ruff) on top of the course's notebook tools; after a
# learner's plain setup.sh this installs just what is missing, afterwards it skips pip.
bash scripts/setup.sh --dev
export MPLBACKEND=agg
# Temporary files inside the repo (.tmp/ is git-ignored): run folders stay inspectable after a
# failure, and machines with a small or shared /tmp are not a problem.
mkdir -p .tmp
# With no arguments: the test suite plus every notebook as committed (nbval, default parameters,
# as a learner runs it), with the slowest 30 timed (each notebook's papermill run among them, the
# figure behind "the whole course runs in under 20 minutes"). With arguments: exactly what was asked for.
if [ "$#" -eq 0 ]; then
  set -- tests notebooks --nbval-lax --durations=30
fi
exec .venv/bin/python -m pytest --basetemp=.tmp/pytest "$@"

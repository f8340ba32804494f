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
# With no arguments: the test suite, which executes every notebook once, as committed (its default
# parameters, as a learner runs it; tests/test_notebooks.py), with the slowest 30 timed (each
# notebook among them). With arguments: exactly what was asked for (e.g. `notebooks --nbval-lax`).
if [ "$#" -eq 0 ]; then
  set -- tests --durations=30
fi
exec .venv/bin/python -m pytest --basetemp=.tmp/pytest "$@"

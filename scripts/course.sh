#!/usr/bin/env bash
# Run the whole course headless on the cpu profile into runs/course, the run folder every
# notebook opens by default, so a prepared run lets each notebook start from its own stage
# (set up first if needed).
# Arguments go to `rlhf-course run`, e.g.  bash scripts/course.sh --stages base --seed 1
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
exec .venv/bin/rlhf-course run --profile cpu --out runs/course "$@"

#!/usr/bin/env bash
# Install the course: a .venv in the repo root, a torch that fits this machine, then the package
# with the notebook tools a learner needs (the `course` extra: JupyterLab, papermill, ...).
#
#   bash scripts/setup.sh            # .venv in the repo root (created if absent)
#   bash scripts/setup.sh --system   # the current interpreter, no venv (Colab, conda)
#   bash scripts/setup.sh --dev      # also the test tools (`dev` extra); scripts/test.sh does this
#
# Environment: PYTHON (interpreter used to create .venv or, with --system, to install into;
# default python3), RLHF_COURSE_TORCH (torch version installed when none is; default 2.13.0).
# Safe to run again: it keeps an installed torch and skips pip when nothing changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

system=0
extras=course
for arg in "$@"; do
  case "$arg" in
    --system) system=1 ;;
    --dev) extras=course,dev ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (use --system, --dev or --help)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null; then
  echo "setup.sh: $PYTHON not found; install Python 3.11+ or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup.sh: $PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())');" \
       "the course needs 3.11+ (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [[ $system == 1 ]]; then
  py=$(command -v "$PYTHON")
  echo "setup: installing into the current interpreter $py (--system, no venv)"
else
  if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv .venv
  fi
  py=.venv/bin/python
fi

# torch first, on its own: installed as a dependency of the package, pip on Linux would pick the
# multi-GB CUDA build even on a laptop without a GPU. An importable torch (Colab's, conda's, a CPU
# build installed by hand) is always kept; the package's loose `torch>=2.4` accepts it.
if torch_version=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
  echo "setup: keeping torch $torch_version (already installed)"
else
  spec="torch==${RLHF_COURSE_TORCH:-2.13.0}"
  echo "setup: torch not installed; installing $spec (set RLHF_COURSE_TORCH to choose another" \
       "version; on Linux without a GPU, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" \
       "first to get the small CPU build). This can take a few minutes."
  "$py" -m pip install -q "$spec"
fi

# The package and the extras asked for, editable. Skipped when pyproject.toml has not changed
# since the last successful install into this interpreter, that install included every extra
# asked for now, and the package still imports from this checkout (`-P`: without it, Python would
# import rlhf_course from the current folder, installed or not). The stamp holds the hash of
# pyproject.toml and the extras installed with it, so a learner's `course`-only setup followed by
# scripts/test.sh (`--dev`) installs the test tools, and setup.sh after test.sh installs nothing.
mkdir -p .tmp
# Hashes via Python, not sha1sum: macOS has no sha1sum.
stamp=".tmp/setup-$("$py" -c 'import hashlib, sys; print(hashlib.sha1(sys.prefix.encode()).hexdigest()[:12])')"
want=$("$py" -c 'import hashlib; print(hashlib.sha1(open("pyproject.toml", "rb").read()).hexdigest())')
here="$(pwd -P)"
installed_from=$("$py" -P -c 'import pathlib, rlhf_course; print(pathlib.Path(rlhf_course.__file__).resolve().parent.parent)' 2>/dev/null || true)
stamped_hash="" stamped_extras=""
if [[ -f $stamp ]]; then
  read -r stamped_hash stamped_extras < "$stamp" || true
fi
current=0
[[ "$stamped_hash" == "$want" && "$installed_from" == "$here" ]] && current=1
missing=""
for extra in ${extras//,/ }; do
  [[ ",$stamped_extras," == *",$extra,"* ]] || missing+=" $extra"
done
if [[ $current == 1 && -z $missing ]]; then
  echo "setup: rlhf-course[$extras] already installed from $here (pyproject.toml unchanged)"
else
  echo "setup: installing rlhf-course with the extras $extras (pip install -e '.[$extras]')"
  "$py" -m pip install -q -e ".[$extras]"
  # Same pyproject.toml: what was installed before is still there, so the stamp keeps it.
  if [[ $current == 1 && -n $stamped_extras ]]; then
    extras=$(printf '%s\n' ${stamped_extras//,/ } ${extras//,/ } | sort -u | paste -sd, -)
  fi
  echo "$want $extras" > "$stamp"
fi
"$py" -P - <<'PY'
import platform

import torch

import rlhf_course  # noqa: F401  (fails loudly here if the install is broken)

cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"setup: ready: python {platform.python_version()}, torch {torch.__version__}, GPU: {cuda}")
PY

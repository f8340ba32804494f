#!/usr/bin/env bash
# Open the course: JupyterLab from .venv on notebooks/ (set up first if needed). The notebooks'
# kernel ("python3") is .venv's Python, so `import rlhf_course` works, and every notebook opens
# runs/course at the repo root (or $RLHF_COURSE_RUN_DIR), where scripts/course.sh writes.
# Prints the URL to open; Ctrl+C stops the server. Arguments go to `jupyter lab`, e.g.
#   bash scripts/lab.sh --no-browser --port 8899
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd -P)"

bash scripts/setup.sh

# The kernel: the notebooks ask for "python3". .venv/share/jupyter/kernels/python3 (installed
# with ipykernel) runs `python`, which jupyter_client replaces with the server's own interpreter,
# .venv/bin/python. Put that folder first, so a "python3" kernel registered elsewhere (say, by
# `ipykernel install --user` from another Python, which has no rlhf_course) cannot shadow it.
export JUPYTER_PREFER_ENV_PATH=1
export JUPYTER_PATH="$root/.venv/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
# Terminals and `!pip` in JupyterLab use the course's environment too.
export VIRTUAL_ENV="$root/.venv" PATH="$root/.venv/bin:$PATH"

args=(--ServerApp.root_dir="$root/notebooks")
# No screen (CI, ssh, a container): do not try to start a browser; on such machines Python may
# fall back to a text browser that takes over the terminal. A laptop gets its browser opened.
if [[ -n ${CI:-} || ( $(uname) == Linux && -z ${DISPLAY:-} && -z ${WAYLAND_DISPLAY:-} ) ]]; then
  args+=(--no-browser)
fi
# Containers and CI often run as root, and Jupyter refuses to start as root without this.
[[ $(id -u) == 0 ]] && args+=(--allow-root)

# Started in the background so this script can read the server's own record of its address
# (port and token included, whatever the arguments chose) and print one clear line to open.
.venv/bin/python -m jupyterlab "${args[@]}" "$@" &
pid=$!
stop() { kill -TERM "$pid" 2>/dev/null || true; }
trap stop INT TERM HUP
info="$(.venv/bin/jupyter --runtime-dir)/jpserver-$pid.json"
while kill -0 "$pid" 2>/dev/null && [[ ! -s $info ]]; do sleep 0.2; done
if [[ -s $info ]]; then
  url=$(.venv/bin/python - "$info" <<'PY'
import json, sys

server = json.load(open(sys.argv[1]))
token = f"?token={server['token']}" if server.get("token") else ""
print(f"{server['url'].rstrip('/')}/lab/tree/00_welcome.ipynb{token}")
PY
)
  echo
  echo "lab: the course is open at  $url"
  echo "lab: notebooks in $root/notebooks; Ctrl+C stops the server"
  echo
fi
# A trapped signal interrupts `wait` (status 128+n) while the server is still shutting down:
# wait again, so the script ends with the server and exits with its status.
while :; do
  status=0
  wait "$pid" || status=$?
  kill -0 "$pid" 2>/dev/null || break
done
exit "$status"

#!/usr/bin/env bash
# The main job: install Sandbox Kernel with the local sandbox (the default backend), register
# the Sandbox (Python), (Node.js) and (Bash) kernels, and open JupyterLab.
#   bash scripts/start.sh            # JupyterLab on http://127.0.0.1:8888
#   bash scripts/start.sh console    # jupyter console with Sandbox (Python)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh lab
python3 -m sandbox_kernel install --sys-prefix --backend local
root=()
[[ $(id -u) == 0 ]] && root=(--allow-root)
case "${1:-lab}" in
  console) exec jupyter console --kernel "${SANDBOX_KERNEL:-sandbox-python}" ;;
  lab) exec jupyter lab --no-browser --ip 127.0.0.1 "${root[@]}" ;;
  *) echo "usage: $0 [lab|console]" >&2; exit 2 ;;
esac

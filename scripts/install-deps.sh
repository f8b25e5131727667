#!/usr/bin/env bash
# Install what Sandbox Kernel needs on a fresh Debian/Ubuntu machine: bubblewrap for the local
# sandbox, Node.js and Bash runtimes for the Node and Bash kernels, and the Python package
# itself (editable) with the extras named in $1 (default: lab).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-lab}

need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v node >/dev/null || need+=(nodejs)
command -v setpriv >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e ".[${extras}]"

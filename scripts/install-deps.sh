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
# The local sandbox's seccomp filter is compiled with libseccomp's bindings for the system python3.
/usr/bin/python3 -c "import seccomp" 2>/dev/null || need+=(python3-seccomp)
with_test=0
[[ ",$extras," == *",test,"* ]] && with_test=1
if ((with_test)); then
  # The browser test drives Debian's Chromium through npm playwright-core (no browser download).
  command -v chromium >/dev/null || need+=(chromium)
  command -v npm >/dev/null || need+=(npm)
  # The egress tests (tests/integration/test_egress_local.py): curl and pip inside the sandbox.
  command -v curl >/dev/null || need+=(curl)
  /usr/bin/python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
fi
if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e ".[${extras}]"
if ((with_test)); then
  # Keep in step with tests/integration/test_jupyterlab_browser.py (PLAYWRIGHT_DIR, version).
  pw_dir=${SANDBOX_KERNEL_PLAYWRIGHT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sandbox-kernel/playwright}
  pw_version=1.65.1
  if ! grep -qs "\"version\": \"$pw_version\"" "$pw_dir/node_modules/playwright-core/package.json"; then
    npm install --prefix "$pw_dir" --no-audit --no-fund --silent "playwright-core@$pw_version" >/dev/null
  fi
fi

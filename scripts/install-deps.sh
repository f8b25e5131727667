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
# gVisor for LocalSandbox.runtime = 'gvisor': runsc of 2023 or later (systrap; bookworm's 20221219
# fails statx, which breaks ls). On bookworm it comes from trixie, pinned to that one package.
runsc_date() { runsc --version 2>/dev/null | grep -o '20[0-9]\{6\}' | head -n1; }
if [[ $(runsc_date) -lt 20230101 ]]; then  # none installed: '' is 0
  sudo_=""
  [[ $(id -u) == 0 ]] || sudo_="sudo"
  if [[ $(. /etc/os-release && echo "${VERSION_CODENAME:-}") == bookworm ]]; then
    if ! grep -rqsE '^(Suites:.*[[:space:]]trixie([[:space:]]|$)|deb .*[[:space:]]trixie[[:space:]])' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      uri=$(sed -n 's/^URIs: *\(.*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
      printf '# Added by sandbox-kernel scripts/install-deps.sh for runsc only (see preferences.d/sandbox-kernel-runsc).\nTypes: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "${uri:-http://deb.debian.org/debian}" | $sudo_ tee /etc/apt/sources.list.d/sandbox-kernel-runsc-trixie.sources >/dev/null
    fi
    printf '# Added by sandbox-kernel scripts/install-deps.sh: nothing from trixie but runsc.\nPackage: *\nPin: release n=trixie\nPin-Priority: 1\n\nPackage: runsc\nPin: release n=trixie\nPin-Priority: 990\n' |
      $sudo_ tee /etc/apt/preferences.d/sandbox-kernel-runsc >/dev/null
  fi
  echo "== apt-get install runsc (gVisor)"
  { $sudo_ apt-get update -qq && $sudo_ apt-get -o DPkg::Lock::Timeout=600 install -y -qq runsc >/dev/null; } ||
    echo "runsc could not be installed: LocalSandbox.runtime = 'gvisor' will not work here" >&2
fi
with_test=0
[[ ",$extras," == *",test,"* ]] && with_test=1
if ((with_test)); then
  # The browser test drives Debian's Chromium through npm playwright-core (no browser download).
  command -v chromium >/dev/null || need+=(chromium)
  command -v npm >/dev/null || need+=(npm)
  # The egress tests (tests/integration/test_egress_local.py): curl and pip inside the sandbox.
  command -v curl >/dev/null || need+=(curl)
  # The lint step of scripts/test.sh checks the shell scripts with it.
  command -v shellcheck >/dev/null || need+=(shellcheck)
  /usr/bin/python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
fi
if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo="sudo"
  echo "== apt-get install ${need[*]}"
  $sudo apt-get update -qq
  $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi
echo "== pip install -e .[${extras}] into $(python3 -c 'import sys; print(sys.prefix)') (the first time: about a minute)"
# Progress: one line per package pip fetches, not its ~150 "already satisfied" lines.
PYTHONUNBUFFERED=1 python3 -m pip install --disable-pip-version-check --progress-bar off -e ".[${extras}]" |
  awk '/^(Collecting|Successfully installed)/ { print "  " substr($0, 1, 160); fflush() }'
if ((with_test)); then
  # Keep in step with tests/integration/test_jupyterlab_browser.py (PLAYWRIGHT_DIR, version).
  pw_dir=${SANDBOX_KERNEL_PLAYWRIGHT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sandbox-kernel/playwright}
  pw_version=1.65.1
  if ! grep -qs "\"version\": \"$pw_version\"" "$pw_dir/node_modules/playwright-core/package.json"; then
    npm install --prefix "$pw_dir" --no-audit --no-fund --silent "playwright-core@$pw_version" >/dev/null
  fi
fi

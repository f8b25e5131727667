#!/usr/bin/env bash
# Run every test: unit, integration (real kernels on the local sandbox) and e2e (the real
# Kubernetes cluster that tests/cluster/up builds and starts). Installs everything it needs.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh test,lab

# The test cluster starts in the background (from its cache in about a minute; built the first
# time, about 20 minutes) while the lint, the type check and the unit tests run: none needs it.
started=0
up_pid=
cleanup() {
  if [[ -n $up_pid ]]; then kill "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  if ((started)); then tests/cluster/down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
echo "== starting the test cluster in the background (tests/cluster/up)"
t0=$(date +%s)
up_log=$(mktemp)  # progress (stderr)
up_out=$(mktemp)  # its last line is the admin kubeconfig (tests/cluster/README.md)
started=1
tests/cluster/up >"$up_out" 2>"$up_log" &
up_pid=$!

echo "== lint and format check (ruff) and types (mypy), configured in pyproject.toml; shellcheck on the shell scripts"
python3 -m ruff check sandbox_kernel tests benchmarks
python3 -m ruff format --check sandbox_kernel tests benchmarks
python3 -m mypy
# The scripts that set up, build and run the tests (-x: follow what they source). Not the Bash
# agent (sandbox_kernel/agents/bash_agent.sh): it is tested by running it (tests/integration/
# test_agent_bash.py), and shellcheck cannot see that its functions run from traps and dispatch.
shell_scripts=(scripts/*.sh images/*/build .ci/run)
for f in tests/cluster/*; do [[ $f == *.md ]] || shell_scripts+=("$f"); done
shellcheck -x "${shell_scripts[@]}"

echo "== unit tests (pure logic; no sandbox, no cluster)"
python3 -m pytest tests/unit -q -ra "$@"

echo "== waiting for the test cluster"
if ! wait "$up_pid"; then
  up_pid=
  tail -n 60 "$up_log" "$up_out"
  echo "test cluster failed to start" >&2
  exit 1
fi
up_pid=
SANDBOX_KUBECONFIG=$(tail -n 1 "$up_out")
export SANDBOX_KUBECONFIG
echo "== cluster up after $(( $(date +%s) - t0 )) s; admin kubeconfig: $SANDBOX_KUBECONFIG"

echo "== integration, security and e2e tests (real kernels, real sandboxes, the real cluster)"
python3 -m pytest tests --ignore=tests/unit -ra --durations=30 "$@"

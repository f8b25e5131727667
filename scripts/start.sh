#!/usr/bin/env bash
# The main job: install Sandbox Kernel with the local sandbox (the default backend) into a
# virtual environment of its own, register the Sandbox (Python), (Node.js) and (Bash) kernels,
# and open JupyterLab on a notebook folder of the user's (not this checkout). See usage below.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
SECONDS=0

usage() {
  cat <<EOF
usage: bash scripts/start.sh [lab|kubernetes|console] [--port N] [--notebooks DIR] [--venv DIR]
                            [--kubeconfig FILE]

Sets Sandbox Kernel up on this machine (Debian/Ubuntu) and opens it:
  lab        JupyterLab on http://127.0.0.1:PORT, serving DIR (the default)
  kubernetes the same, plus the project's own single-node Kubernetes cluster (tests/cluster/up,
             as root: the first run builds Kubernetes from source, ~15-25 min on 2 cores; later
             ~35 s) and the "Sandbox (…) · Kubernetes" kernels next to the local ones, for the
             study notebooks in DIR/cka-study
  console    jupyter console on Sandbox (Python) (\$SANDBOX_KERNEL names another kernel)

Installs bubblewrap and Node.js with apt (sudo unless root) when missing, and this checkout
(editable) with JupyterLab into a virtual environment, created once and reused, unless run
inside an active one. Registers the Sandbox kernels there, on the local sandbox.

options:
  --port N          JupyterLab's port (default: 8888); refused if something listens there
  --notebooks DIR   the folder JupyterLab serves (default: ~/sandbox-notebooks, created);
                    the study notebooks of notebooks/ are copied into DIR/cka-study once
  --venv DIR        the virtual environment (default: ~/.local/share/sandbox-kernel/venv)
  --kubeconfig FILE kubernetes: use the existing cluster FILE names (kind, minikube, k3d, a
                    cloud cluster; its kubeconfig with admin rights, kubectl on PATH) instead of
                    building the project's own; its network plugin must enforce NetworkPolicy
                    (notebooks/README.md says which do)
  -h, --help        this text; installs nothing

environment: SANDBOX_NOTEBOOKS, SANDBOX_KERNEL_VENV (defaults for --notebooks, --venv),
SANDBOX_KERNEL (the console's kernel, default sandbox-python)
EOF
}

die() { echo "start.sh: $*" >&2; exit 2; }
step() { echo "==> $*"; }

# -- arguments: all checked before anything is installed --------------------------------------
mode=lab
port=8888
notebooks=${SANDBOX_NOTEBOOKS:-$HOME/sandbox-notebooks}
venv=${SANDBOX_KERNEL_VENV:-${XDG_DATA_HOME:-$HOME/.local/share}/sandbox-kernel/venv}
port_given=0
cluster_kubeconfig=
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    lab|kubernetes|console) mode=$1 ;;
    --port|--notebooks|--venv|--kubeconfig)
      (($# >= 2)) || die "$1 needs a value (see --help)"
      case "$1" in
        --port) port=$2; port_given=1 ;; --notebooks) notebooks=$2 ;; --venv) venv=$2 ;;
        --kubeconfig) cluster_kubeconfig=$2 ;;
      esac
      shift ;;
    --port=*) port=${1#*=}; port_given=1 ;;
    --notebooks=*) notebooks=${1#*=} ;;
    --venv=*) venv=${1#*=} ;;
    --kubeconfig=*) cluster_kubeconfig=${1#*=} ;;
    *) echo "start.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if ! { [[ $port =~ ^[0-9]{1,5}$ ]] && ((port >= 1 && port <= 65535)); }; then
  die "--port must be a number from 1 to 65535, not '$port'"
fi
[[ $mode != console || $port_given == 0 ]] || die "--port is for lab, not $mode"
if [[ $mode != console ]] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  die "port $port is in use (another JupyterLab?): pick another with --port N"
fi
[[ -z $notebooks ]] && die "--notebooks needs a folder"
if [[ -n $cluster_kubeconfig ]]; then
  [[ $mode == kubernetes ]] || die "--kubeconfig is for kubernetes, not $mode"
  [[ -f $cluster_kubeconfig ]] || die "--kubeconfig $cluster_kubeconfig is not a file"
  command -v kubectl >/dev/null || die "--kubeconfig needs kubectl on PATH (https://kubernetes.io/docs/tasks/tools/)"
  cluster_kubeconfig=$(realpath -- "$cluster_kubeconfig")
fi
notebooks=$(realpath -m -- "$notebooks")
venv=$(realpath -m -- "$venv")
if [[ -e $notebooks && ! -d $notebooks ]]; then die "--notebooks $notebooks is not a folder"; fi

sudo=()
[[ $(id -u) == 0 ]] || sudo=(sudo)
apt_install() {
  step "apt-get install $* (${sudo[*]:-as root})"
  if ((${#sudo[@]})) && ! command -v sudo >/dev/null; then
    echo "start.sh: needs root to install $*: run as root, or install them first" >&2
    exit 1
  fi
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >/dev/null
}

# -- Python: an active virtual environment, else our own ---------------------------------------
command -v python3 >/dev/null || apt_install python3 python3-venv
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  { echo "start.sh: Sandbox Kernel needs Python >= 3.10; $(command -v python3) is $(python3 -V 2>&1)" >&2; exit 1; }
if python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  venv=$(python3 -c 'import sys; print(sys.prefix)')
  step "using the active virtual environment $venv"
else
  if [[ -x $venv/bin/python3 ]] && "$venv/bin/python3" -c 'import sys' 2>/dev/null; then
    step "reusing the virtual environment $venv"
  else
    if [[ -e $venv ]]; then
      [[ -f $venv/pyvenv.cfg ]] || die "$venv exists and is not a virtual environment: pick another with --venv"
      step "the virtual environment $venv is broken (Python upgraded?): making it again"
      rm -rf -- "$venv"
    fi
    # Debian and Ubuntu ship venv's ensurepip separately (python3.X-venv).
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
      apt_install "python$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
    fi
    step "creating the virtual environment $venv (for $(python3 -V))"
    mkdir -p -- "$(dirname -- "$venv")"
    python3 -m venv -- "$venv"
  fi
  export VIRTUAL_ENV=$venv
  export PATH="$venv/bin:$PATH"
fi
py=$venv/bin/python3

# -- install ------------------------------------------------------------------------------------
bash scripts/install-deps.sh lab
step "registering the Sandbox kernels (local sandbox) in $venv"
"$py" -m sandbox_kernel install --sys-prefix --backend local | sed 's/^/  /'
found=$("$py" -c 'from jupyter_client.kernelspec import KernelSpecManager as M; print(M().find_kernel_specs().get("sandbox-python", ""))')
if [[ $found != "$venv"/* ]]; then
  echo "warning: Jupyter picks the sandbox-python kernelspec in $found over the one just installed;" \
       "remove it with: jupyter kernelspec remove sandbox-python" >&2
fi

# -- kubernetes: the project's cluster, the kernels' identity on it, the Kubernetes kernels ----------
if [[ $mode == kubernetes && -n $cluster_kubeconfig ]]; then
  admin=$cluster_kubeconfig
  step "using the existing cluster of $admin (context $(kubectl --kubeconfig "$admin" config current-context))"
  kubectl --kubeconfig "$admin" version >/dev/null || die "the cluster of $admin does not answer (kubectl version failed)"
  # Its own user and kubectl, no root; the images are the official ones (KubernetesSandbox.images).
  sudo=()
  in_cluster_env() { env SANDBOX_KUBECONFIG="$admin" bash -c 'source tests/cluster/lib.sh && "$@"' _ "$@"; }
elif [[ $mode == kubernetes ]]; then
  if ((${#sudo[@]})) && ! command -v sudo >/dev/null; then
    echo "start.sh: the cluster runs as root: run this as root, or install sudo" >&2
    exit 1
  fi
  step "the project's single-node Kubernetes cluster (tests/cluster/up, as root): the first run builds" \
       "Kubernetes from source, ~15-25 min on 2 cores (its progress follows); later starts ~35 s"
  # up: progress on stderr, the admin kubeconfig's path as its last stdout line.
  admin=$("${sudo[@]}" "$repo/tests/cluster/up" | tail -n1) || die "tests/cluster/up failed (its log is above)"
  in_cluster_env() { "${sudo[@]}" env SANDBOX_KUBECONFIG="$admin" bash -c 'source tests/cluster/lib.sh && "$@"' _ "$@"; }
fi
if [[ $mode == kubernetes ]]; then
  step "kubectl apply -k k8s/rbac/ (the kernels' least-privilege identity and the admission policies confining it)"
  in_cluster_env kubectl --kubeconfig "$admin" apply -k k8s/rbac/ | sed 's/^/  /'
  # The kernels run as that service account, with a kubeconfig of this user's own.
  kubeconfig=${XDG_CONFIG_HOME:-$HOME/.config}/sandbox-kernel/cluster-sandbox-kernel.kubeconfig
  mkdir -p -- "$(dirname -- "$kubeconfig")"
  in_cluster_env tests/cluster/kubeconfig-for sandbox-kernel-system sandbox-kernel "$kubeconfig" 24h >/dev/null
  ((${#sudo[@]})) && "${sudo[@]}" chown "$(id -u):$(id -g)" "$kubeconfig"
  export SANDBOX_KUBECONFIG=$kubeconfig
  if [[ -z $cluster_kubeconfig ]]; then
    # The sandbox images the cluster built (SANDBOX_IMAGE_PYTHON, ...), for the kernels.
    set -a
    # shellcheck disable=SC1090,SC2016  # written by tests/cluster/images; $CACHE is lib.sh's
    source <("${sudo[@]}" bash -c 'source tests/cluster/lib.sh && cat "$CACHE/images.env"')
    set +a
  fi
  step "registering the Sandbox kernels (Kubernetes, token valid 24 h: run this again after) in $venv"
  "$py" -m sandbox_kernel install --sys-prefix --backend kubernetes --name-suffix=-kubernetes | sed 's/^/  /'
fi

if [[ $mode == console ]]; then
  step "jupyter console --kernel ${SANDBOX_KERNEL:-sandbox-python} (quit with Ctrl-D)"
  exec "$py" -m jupyter console --kernel "${SANDBOX_KERNEL:-sandbox-python}"
fi

# -- the notebook folder: the user's, with the study notebooks offered once ----------------------
study=$notebooks/cka-study
mkdir -p -- "$study"
copied=0
for f in "$repo"/notebooks/*.ipynb "$repo"/notebooks/README.md; do
  if [[ ! -e $study/${f##*/} ]]; then cp -- "$f" "$study/"; copied=$((copied + 1)); fi
done
if ((copied)); then
  step "copied $copied study notebook files into $study (your copies are never overwritten)"
fi

# -- JupyterLab ---------------------------------------------------------------------------------
root=()
[[ $(id -u) == 0 ]] && root=(--allow-root)
JUPYTER_TOKEN=${JUPYTER_TOKEN:-$("$py" -c 'import secrets; print(secrets.token_hex(24))')}
export JUPYTER_TOKEN
url="http://127.0.0.1:$port/lab?token=$JUPYTER_TOKEN"
[[ $mode == kubernetes ]] && url="http://127.0.0.1:$port/lab/tree/cka-study?token=$JUPYTER_TOKEN"
step "starting JupyterLab on port $port, serving $notebooks (set up in $SECONDS s)"
# Once the server listens, say where to go (after its start-up log). This shell becomes
# JupyterLab (exec), so Ctrl-C works as usual and the watcher stops when the server does.
server=$$
(
  for _ in $(seq 600); do
    kill -0 "$server" 2>/dev/null || exit 0
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      sleep 1
      printf '\n==> JupyterLab is ready. Open:\n\n    %s\n\n    notebooks: %s (the CKA study notebooks in cka-study/ need a cluster: cka-study/README.md)\n    stop: Ctrl-C\n\n' \
        "$url" "$notebooks" >&2
      exit 0
    fi
    sleep 0.5
  done
) &
exec "$py" -m jupyter lab --no-browser --ip 127.0.0.1 --port "$port" --ServerApp.port_retries=0 \
  --ServerApp.root_dir="$notebooks" --MultiKernelManager.default_kernel_name=sandbox-python "${root[@]}"

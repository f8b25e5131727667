# shellcheck shell=bash
# Variables here are used by the scripts that source this file.
# shellcheck disable=SC2034
# Common settings for the test-cluster scripts (sourced by up, down, build-binaries, images,
# kubeconfig-for). Everything version-dependent lives in the cache under a versioned key, so a
# later run or another clone of the repo reuses binaries and images.

K8S_VERSION="${K8S_VERSION:-v1.34.4}"          # latest v1.34.x patch on the Go module proxy
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"

CACHE="${SANDBOX_CLUSTER_CACHE:-$HOME/.cache/sandbox-kernel/cluster}"
BIN_DIR="$CACHE/bin/k8s-$K8S_VERSION-kr-$KUBE_ROUTER_VERSION-dns-$COREDNS_VERSION"
STATE="${SANDBOX_CLUSTER_STATE:-/var/lib/sandbox-kernel-cluster}"
LOG_DIR="$STATE/logs"
PID_DIR="$STATE/pids"
PKI="$STATE/pki"

NODE_NAME="sandbox-node"
POD_CIDR="10.244.0.0/24"
SERVICE_CIDR="10.96.0.0/16"
KUBERNETES_SVC_IP="10.96.0.1"
CLUSTER_DNS_IP="10.96.0.10"
CLUSTER_DOMAIN="cluster.local"
APISERVER_PORT=6443

# Fixed by containerd/runc regardless of the root we choose (see down for cleanup).
CONTAINERD_ROOT="$STATE/containerd/root"
CONTAINERD_STATE="/run/sandbox-kernel-cluster/containerd"
CONTAINERD_SOCK="$CONTAINERD_STATE/containerd.sock"
KUBELET_ROOT="$STATE/kubelet"

export PATH="$BIN_DIR:/usr/local/go/bin:/usr/sbin:/sbin:$PATH"

# Serialize up and down: one cluster per machine, shared by every engineer and CI. The lock fd is
# inherited by children; up closes it for the daemons it starts (9>&-). down run by up reuses it.
take_lock() {
  [[ -n "${SANDBOX_CLUSTER_LOCK_HELD:-}" ]] && return 0
  exec 9>/run/sandbox-kernel-cluster.lock
  if ! flock -n 9; then
    log "waiting for another tests/cluster/up or down to finish"
    flock -w 3600 9 || die "timed out waiting for the cluster lock /run/sandbox-kernel-cluster.lock"
  fi
  export SANDBOX_CLUSTER_LOCK_HELD=1
}

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Print the tail of a component's log to stderr (used on failures).
show_log() {
  local f="$LOG_DIR/$1.log"
  if [[ -f "$f" ]]; then
    printf '\n----- last 40 lines of %s -----\n' "$f" >&2
    tail -n 40 "$f" >&2
    printf -- '----- end of %s -----\n' "$f" >&2
  fi
}

apt_install() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || true
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

# etcd: bookworm ships 3.4 (too old for Kubernetes 1.34, which needs >= 3.5.13). Trixie's
# etcd-server is used instead; the pin below keeps every other package on bookworm.
enable_trixie_for_etcd() {
  local src=/etc/apt/sources.list.d/sandbox-kernel-cluster-trixie.sources
  local pref=/etc/apt/preferences.d/sandbox-kernel-cluster-trixie
  if [[ ! -f "$src" || ! -f "$pref" ]]; then
    local uri
    uri="$(sed -n 's/^URIs: *\(.*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)"
    [[ -n "$uri" ]] || uri="$(awk '/^deb .*\/debian /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
    [[ -n "$uri" ]] || die "cannot find the Debian mirror in the apt sources"
    cat >"$src" <<SRC
# Added by sandbox-kernel tests/cluster/up: only etcd-server is taken from here (see $pref).
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat >"$pref" <<'PREF'
# Added by sandbox-kernel tests/cluster/up: nothing from trixie unless named here.
Package: *
Pin: release n=trixie
Pin-Priority: 1

Package: etcd-server
Pin: release n=trixie
Pin-Priority: 990
PREF
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  fi
}

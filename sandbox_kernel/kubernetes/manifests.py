"""Pure builders for every object a Kubernetes sandbox is made of.

Each function takes small frozen dataclasses and returns the plain dict the API server is sent,
so ``sandbox-kernel render``, ``k8s/sandbox/*.yaml`` and the running kernel all apply exactly
the same objects, and the tests compare whole dicts without a cluster. Nothing here talks to
the network or reads settings; :mod:`.settings` turns settings into these dataclasses and
:mod:`.api` sends the dicts.

One sandbox is, in the order it is created::

    Namespace        sandbox-<8 hex>, Pod Security "restricted", labels naming kernel/owner
    RoleBinding      gives the kernel's own identity the sandbox role in this namespace only
    ResourceQuota    caps what all pods of the namespace may request and use
    LimitRange       per-container bounds and defaults
    NetworkPolicy    deny-all: no ingress, no egress (not even DNS)
    ConfigMap        the agent's source, mounted read-only into the pod
    Lease            the kernel's heartbeat; ``sandbox-kernel gc`` reclaims it once expired
    Pod              one long-lived agent per kernel, attached to through the API server
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

MANAGED_BY = "sandbox-kernel"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_KERNEL_ID = "sandbox-kernel/kernel-id"
LABEL_LANGUAGE = "sandbox-kernel/language"
LABEL_OWNER = "sandbox-kernel/owner"
ANNOTATION_CREATED = "sandbox-kernel/created"
ANNOTATION_USER = "sandbox-kernel/user"

SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
"""Label selector matching every namespace (and object) this project created."""

AGENT_DIR = "/opt/sandbox-agent"
SANDBOX_HOME = "/home/sandbox"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_UID = 1000
CONTAINER_NAME = "agent"
CONFIG_MAP_NAME = "sandbox-agent"
LEASE_NAME = "sandbox-heartbeat"
NETWORK_POLICY_NAME = "deny-all"
QUOTA_NAME = "sandbox-quota"
LIMIT_RANGE_NAME = "sandbox-limits"
ROLE_BINDING_NAME = "sandbox-kernel"
SECCOMP_PROFILE = "profiles/sandbox-kernel.json"
"""The Localhost seccomp profile the project ships: ``sandbox_kernel.local.seccomp_policy.to_oci_profile()``
(the local sandbox's table) written to ``<kubelet root>/seccomp/profiles/sandbox-kernel.json`` on each
node (tests/cluster/up does it on the test node). The admission policy ``sandbox-kernel-pods-command``
admits exactly this Localhost profile or RuntimeDefault."""
SCRATCH_MEDIUM = "Memory"
"""HOME and /tmp are memory-backed emptyDirs: tmpfs of ``sizeLimit`` on the node, so a write past it
fails at once with ENOSPC (a disk-backed emptyDir's sizeLimit is only enforced by eviction, after
the fact, and the node's disk fills first). Their pages count against the container's memory limit."""
GATE_LINE = b"go\n"
"""What the kernel writes to the pod's stdin once attached: it lets the agent start (see :func:`agent_command`)."""


# ---------------------------------------------------------------------------------------------
# Inputs.


@dataclass(frozen=True)
class SandboxIdentity:
    """Which kernel a sandbox belongs to and who started it."""

    namespace: str
    kernel_id: str
    language: str
    owner: str
    """Label-safe owner: the service account's name, or the sanitised user name."""
    user: str
    """The full Kubernetes user name of the kernel's identity (e.g. ``system:serviceaccount:ns:sa``)."""
    created: str
    """RFC 3339 creation time, e.g. ``2025-01-01T00:00:00Z``."""


@dataclass(frozen=True)
class QuotaSpec:
    """``spec.hard`` of the namespace's ResourceQuota."""

    requests_cpu: str = "500m"
    requests_memory: str = "256Mi"
    limits_cpu: str = "1"
    limits_memory: str = "512Mi"
    pods: int = 3
    persistentvolumeclaims: int = 0
    services: int = 0


@dataclass(frozen=True)
class LimitRangeSpec:
    """Per-container bounds and defaults of the namespace's LimitRange."""

    max_cpu: str = "500m"
    max_memory: str = "256Mi"
    min_cpu: str = "10m"
    min_memory: str = "10Mi"
    default_cpu: str = "250m"
    default_memory: str = "128Mi"
    default_request_cpu: str = "100m"
    default_request_memory: str = "64Mi"


@dataclass(frozen=True)
class PodSpec:
    """Everything that varies in the sandbox pod."""

    name: str
    image: str
    interpreter: str
    agent_file: str
    cpu_request: str = "100m"
    memory_request: str = "64Mi"
    cpu_limit: str = "500m"
    memory_limit: str = "256Mi"
    scratch_size: str = "64Mi"
    tmp_size: str = "16Mi"
    active_deadline_seconds: int = 43200
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[dict[str, Any], ...] = field(default=())
    runtime_class_name: str = ""
    network_policy_wait: int = 10
    """Most seconds the agent waits for the deny-all NetworkPolicy to be in force (0: do not check)."""
    shell_as_init: bool = False
    """Keep ``/bin/sh`` as PID 1 to reap orphans, for agents that cannot (see :func:`agent_command`)."""
    seccomp_profile: str = ""
    """``""``: the runtime's default seccomp profile (RuntimeDefault); else a Localhost profile's path
    relative to the kubelet's seccomp root, e.g. :data:`SECCOMP_PROFILE` (see :func:`seccomp_profile`)."""


@dataclass(frozen=True)
class Subject:
    """The identity the kernel talks to the API server as (an RBAC subject)."""

    kind: str
    """``ServiceAccount`` or ``User``."""
    name: str
    namespace: str = ""

    @classmethod
    def from_username(cls, username: str) -> "Subject":
        """``system:serviceaccount:NS:NAME`` → a ServiceAccount subject; anything else → a User."""
        parts = username.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            return cls("ServiceAccount", parts[3], parts[2])
        return cls("User", username)


# ---------------------------------------------------------------------------------------------
# Helpers.


def label_value(text: str) -> str:
    """Make ``text`` a valid label value (≤ 63 chars of ``[A-Za-z0-9._-]``, alphanumeric ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._")
    return value or "unknown"


def owner_label(username: str) -> str:
    """The owner label for a user name: a service account's name, else the sanitised user name."""
    subject = Subject.from_username(username)
    return label_value(subject.name)


POLICY_NOT_ENFORCED = 97
"""Exit status of the container when the deny-all NetworkPolicy is not in force (see :data:`POLICY_GUARDS`)."""

IPV6_PORTS = (6443, 10250)
"""The node's ports the policy guard must find closed at the node's IPv6 link-local address: the API
server's service port and the kubelet's (see :data:`POLICY_GUARDS`)."""

# Run before the agent, with the image's interpreter: wait until the API server (the one address
# every pod can reach when no policy applies) is unreachable, i.e. the deny-all NetworkPolicy is
# programmed for this pod. Network plugins program a new pod's rules a moment after it starts
# (kube-router: ~0.4 s), and no cell may run in that gap. Gives up with exit status 97 after
# WAIT seconds: a cluster that does not enforce NetworkPolicy never runs cells.
#
# IPv6 too: many plugins (kube-router among them) filter IPv4 only, while every interface has an
# fe80:: link-local address and the node's API server and kubelet listen on [::]. So if the pod
# has any IPv6 address besides loopback (/proc/net/if_inet6), the guard also requires that the
# node does not answer on IPV6_PORTS (the API server's service port, 6443, the kubelet's 10250)
# at its link-local address: the IPv4 default gateway's MAC from /proc/net/arp, turned into its
# EUI-64 fe80:: address, and any IPv6 default route's next hop (/proc/net/ipv6_route). A pod
# without IPv6 (the test cluster's CNI turns it off) pays one file read for this.
POLICY_GUARDS: dict[str, list[str]] = {
    "python3": ["python3", "-c", (
        "import os,select,socket,sys,time\n"
        "h=os.environ.get('KUBERNETES_SERVICE_HOST');p=int(os.environ.get('KUBERNETES_SERVICE_PORT') or 443)\n"
        "def rd(f):\n"
        " try:return [l.split() for l in open(f).read().splitlines()]\n"
        " except OSError:return []\n"
        "def v6():\n"
        " if not [x for x in rd('/proc/net/if_inet6') if x[-1]!='lo']:return False\n"
        " t={(socket.inet_ntop(socket.AF_INET6,bytes.fromhex(x[4])),x[9]) for x in rd('/proc/net/ipv6_route') if x[0]=='0'*32 and x[4]!='0'*32}\n"
        " g=[socket.inet_ntoa(bytes.fromhex(x[2])[::-1]) for x in rd('/proc/net/route')[1:] if x[1]=='00000000']\n"
        " for x in rd('/proc/net/arp')[1:]:\n"
        "  if x[0] in g and x[3]!='00:00:00:00:00:00':\n"
        "   b=bytes.fromhex(x[3].replace(':',''));b=bytes([b[0]^2])+b[1:3]+bytes([255,254])+b[3:]\n"
        "   t.add(('fe80::'+':'.join(b[i:i+2].hex() for i in range(0,8,2)),x[5]))\n"
        " w={}\n"
        " for a,d in t:\n"
        "  for q in {p,PORTS}:\n"
        "   s=socket.socket(socket.AF_INET6);s.setblocking(False)\n"
        "   try:s.connect_ex((a,q,0,socket.if_nametoindex(d)));w[s]=1\n"
        "   except OSError:s.close()\n"
        " o=False;e=time.time()+0.5\n"
        " while w and not o and time.time()<e:\n"
        "  r=select.select([],list(w),[],max(0,e-time.time()))[1]\n"
        "  if not r:break\n"
        "  for s in r:o=o or s.getsockopt(socket.SOL_SOCKET,socket.SO_ERROR)==0;w.pop(s);s.close()\n"
        " [s.close() for s in w]\n"
        " return o\n"
        "end=time.time()+WAIT\n"
        "while h and time.time()<end:\n"
        " s=socket.socket();s.settimeout(1)\n"
        " try:s.connect((h,p));o=True\n"
        " except OSError:o=v6()\n"
        " finally:s.close()\n"
        " if not o:sys.exit(0)\n"
        " time.sleep(0.05)\n"
        "sys.exit(97)"
    )],
    "node": ["node", "-e", (
        "const net=require('net'),fs=require('fs');const h=process.env.KUBERNETES_SERVICE_HOST,p=+(process.env.KUBERNETES_SERVICE_PORT||443);"
        "const end=Date.now()+WAIT*1000;"
        "const rd=f=>{try{return fs.readFileSync(f,'utf8').trim().split('\\n').map(l=>l.trim().split(/\\s+/))}catch(e){return []}};"
        "function targets(){if(!rd('/proc/net/if_inet6').some(x=>x.length>5&&x[5]!=='lo'))return [];const t=[];"
        "for(const x of rd('/proc/net/ipv6_route'))if(x[0]==='0'.repeat(32)&&x[4]!=='0'.repeat(32))t.push([x[4].match(/..../g).join(':'),x[9]]);"
        "const g=rd('/proc/net/route').slice(1).filter(x=>x[1]==='00000000').map(x=>x[2].match(/../g).reverse().map(b=>parseInt(b,16)).join('.'));"
        "for(const x of rd('/proc/net/arp').slice(1))if(g.includes(x[0])&&x[3]!=='00:00:00:00:00:00'){"
        "const b=x[3].split(':').map(v=>parseInt(v,16));b[0]^=2;const w=[...b.slice(0,3),255,254,...b.slice(3)];"
        "t.push(['fe80::'+[0,2,4,6].map(i=>((w[i]<<8)|w[i+1]).toString(16)).join(':'),x[5]])}"
        "const r=[];for(const [a,d] of t)for(const q of new Set([p,PORTS]))r.push([a+'%'+d,q]);return r}"
        "function open(host,port,done){const s=net.connect({host,port,timeout:host.includes(':')?500:1000});let f=false;"
        "const fin=o=>{if(!f){f=true;s.destroy();done(o)}};s.on('connect',()=>fin(true));s.on('error',()=>fin(false));s.on('timeout',()=>fin(false))}"
        "function v6(done){const r=targets();let n=r.length,o=false;if(!n)return done(false);"
        "for(const [a,q] of r)open(a,q,x=>{o=o||x;if(--n===0)done(o)})}"
        "(function t(){if(!h||Date.now()>end)process.exit(97);"
        "open(h,p,o=>{if(o)return setTimeout(t,50);v6(x=>x?setTimeout(t,50):process.exit(0))})})()"
    )],
    "bash": ["bash", "-c", (
        'h=$KUBERNETES_SERVICE_HOST p=${KUBERNETES_SERVICE_PORT:-443} end=$((SECONDS+WAIT)); '
        '[ -n "$h" ] || exit 97; '
        'v6() { local x a d g q t=; '
        'while read -r a _ _ _ _ d; do [ "$d" != lo ] && t=1; done </proc/net/if_inet6; [ -n "$t" ] || return 1; t=; '
        'while read -r x _ _ _ a _ _ _ _ d; do [ "$x" = 00000000000000000000000000000000 ] && '
        '[ "$a" != 00000000000000000000000000000000 ] && '
        't="$t ${a:0:4}:${a:4:4}:${a:8:4}:${a:12:4}:${a:16:4}:${a:20:4}:${a:24:4}:${a:28:4}%$d"; done </proc/net/ipv6_route; '
        'while read -r d x g _; do [ "$x" = 00000000 ] && '
        'g=$((16#${g:6:2})).$((16#${g:4:2})).$((16#${g:2:2})).$((16#${g:0:2})) && break; g=; done </proc/net/route; '
        'while read -r a _ _ x _ d; do [ -n "$g" ] && [ "$a" = "$g" ] && [ "$x" != 00:00:00:00:00:00 ] && '
        'IFS=: read -r m1 m2 m3 m4 m5 m6 <<<"$x" && t="$t $(printf "fe80::%x:%x:%x:%x" $(((16#$m1^2)<<8|16#$m2)) '
        '$((16#$m3<<8|255)) $((254<<8|16#$m4)) $((16#$m5<<8|16#$m6)))%$d"; done </proc/net/arp; '
        'x=; for a in $t; do for q in $p PORTS; do '
        '{ timeout 0.5 bash -c "exec 3<>/dev/tcp/$a/$q"; } & x="$x $!"; done; done; '
        'for q in $x; do wait $q && return 0; done; return 1; } 2>/dev/null; '
        'while [ $SECONDS -lt $end ]; do '
        'timeout 1 bash -c "exec 3<>/dev/tcp/$h/$p" 2>/dev/null || { v6 || exit 0; }; sleep 0.05; done; exit 97'
    )],
}


def agent_command(interpreter: str, agent_file: str, policy_wait: int = 10, shell_as_init: bool = False) -> list[str]:
    """The container command: wait for the network policy and the kernel's gate line, then run the agent.

    First the policy guard (:data:`POLICY_GUARDS`, skipped when ``policy_wait`` is 0) makes
    sure the deny-all NetworkPolicy is in force. It runs before the gate, as soon as the
    container starts, so that its ~50 ms (an interpreter start and a refused connection) overlap
    the kernel noticing the pod runs and attaching, instead of following the gate; nothing of the
    user's runs before both are done. An attach stream only carries what is written after it is
    opened, so the agent must not start (and send its ``ready`` frame) before the kernel is
    attached: it waits for the gate line. ``read`` in ``/bin/sh`` consumes stdin one byte at a
    time, so nothing after the gate line is swallowed (the guard does not read stdin).
    ``env -i`` drops every variable the image and the kubelet set (``KUBERNETES_SERVICE_HOST``
    and the like), leaving the user's code only HOME, PATH and LANG.

    The agent replaces the shell (``exec``) and is PID 1, which inherits every orphaned process
    of the user's code. With ``shell_as_init`` the shell stays PID 1 instead and reaps them
    while it waits for the agent (``; exit $?`` keeps ``sh`` from exec-ing its last command).
    """
    run = shlex.join(
        [
            "env", "-i", f"HOME={SANDBOX_HOME}", f"PATH={SANDBOX_PATH}", "LANG=C.UTF-8",
            interpreter, f"{AGENT_DIR}/{agent_file}",
        ]
    )
    guard = ""
    if policy_wait > 0 and interpreter in POLICY_GUARDS:
        program, flag, code = POLICY_GUARDS[interpreter]
        code = code.replace("WAIT", str(int(policy_wait))).replace("$p PORTS", "$p " + " ".join(map(str, IPV6_PORTS)))
        code = code.replace("PORTS", ",".join(map(str, IPV6_PORTS)))
        guard = shlex.join([program, flag, code]) + " && "
    if shell_as_init:
        return ["/bin/sh", "-c", f"{guard}read -r _ && {run}; exit $?"]
    return ["/bin/sh", "-c", f"{guard}read -r _ && exec {run}"]


_RE2_SPECIAL = set("\\.+*?()|[]{}^$")


def _re2_escape(text: str) -> str:
    return "".join("\\n" if c == "\n" else "\\" + c if c in _RE2_SPECIAL else c for c in text)


def agent_command_pattern() -> str:
    """An RE2 expression matching exactly the commands :func:`agent_command` builds (policy guard on).

    The admission policy ``sandbox-kernel-pods-command`` (k8s/rbac/admission-policy.yaml) admits
    a pod of the service account only if its one container runs ``/bin/sh -c <this>``: the guard
    first, then the gate, then an agent from the mounted ConfigMap, and nothing else (no ``;``
    or ``||`` after the guard), so no code of the pod's creator runs before the guard has seen the
    deny-all policy in force. Any policy wait of 1-9999 s and any agent file name match.
    tests/unit/test_manifests.py checks that the policy carries this very expression.
    """
    wait, agent = "7654321", "AGENTFILE"
    alternatives = []
    for interpreter in POLICY_GUARDS:
        for shell_as_init in (False, True):
            command = agent_command(interpreter, agent, policy_wait=int(wait), shell_as_init=shell_as_init)[2]
            assert command.count(wait) >= 1 and command.count(agent) == 1
            escaped = _re2_escape(command).replace(wait, "[1-9][0-9]{0,3}").replace(agent, "[a-z_]+\\.(?:py|js|sh)")
            alternatives.append(escaped)
    return "^(?:" + "|".join(alternatives) + ")$"


def seccomp_profile(profile: str) -> dict[str, str]:
    """The pod's ``securityContext.seccompProfile``: RuntimeDefault for ``""``, else that Localhost profile."""
    if not profile:
        return {"type": "RuntimeDefault"}
    return {"type": "Localhost", "localhostProfile": profile}


def _labels(ident: SandboxIdentity) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_KERNEL_ID: label_value(ident.kernel_id),
        LABEL_LANGUAGE: ident.language,
        LABEL_OWNER: ident.owner,
    }


def _meta(ident: SandboxIdentity, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": ident.namespace, "labels": _labels(ident)}


# ---------------------------------------------------------------------------------------------
# Builders.


def namespace(ident: SandboxIdentity) -> dict[str, Any]:
    """The sandbox namespace; Pod Security "restricted" is enforced, warned and audited."""
    labels = _labels(ident)
    for mode in ("enforce", "warn", "audit"):
        labels[f"pod-security.kubernetes.io/{mode}"] = "restricted"
    labels["pod-security.kubernetes.io/enforce-version"] = "latest"
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": ident.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_CREATED: ident.created, ANNOTATION_USER: ident.user},
        },
    }


def role_binding(ident: SandboxIdentity, subject: Subject, cluster_role: str) -> dict[str, Any]:
    """Bind ``cluster_role`` to the kernel's own identity in this namespace only (see k8s/rbac/)."""
    entry: dict[str, Any] = {"kind": subject.kind, "name": subject.name}
    if subject.kind == "ServiceAccount":
        entry["namespace"] = subject.namespace
    else:
        entry["apiGroup"] = "rbac.authorization.k8s.io"
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(ident, ROLE_BINDING_NAME),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": [entry],
    }


def resource_quota(ident: SandboxIdentity, quota: QuotaSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta(ident, QUOTA_NAME),
        "spec": {
            "hard": {
                "requests.cpu": quota.requests_cpu,
                "requests.memory": quota.requests_memory,
                "limits.cpu": quota.limits_cpu,
                "limits.memory": quota.limits_memory,
                "pods": str(quota.pods),
                "persistentvolumeclaims": str(quota.persistentvolumeclaims),
                "services": str(quota.services),
            }
        },
    }


def limit_range(ident: SandboxIdentity, limits: LimitRangeSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta(ident, LIMIT_RANGE_NAME),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "max": {"cpu": limits.max_cpu, "memory": limits.max_memory},
                    "min": {"cpu": limits.min_cpu, "memory": limits.min_memory},
                    "default": {"cpu": limits.default_cpu, "memory": limits.default_memory},
                    "defaultRequest": {"cpu": limits.default_request_cpu, "memory": limits.default_request_memory},
                }
            ]
        },
    }


def network_policy(ident: SandboxIdentity) -> dict[str, Any]:
    """Deny all ingress and egress for every pod of the namespace (no rules = nothing allowed)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(ident, NETWORK_POLICY_NAME),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


def agent_config_map(ident: SandboxIdentity, agent_file: str, source: str) -> dict[str, Any]:
    """The agent's source, exactly as shipped with this package."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(ident, CONFIG_MAP_NAME),
        "immutable": True,
        "data": {agent_file: source},
    }


def heartbeat_lease(ident: SandboxIdentity, duration_seconds: int, renew_time: str) -> dict[str, Any]:
    """The heartbeat: the kernel bumps ``renewTime``; it is expired after ``leaseDurationSeconds``.

    ``renew_time`` is a MicroTime, e.g. ``2025-01-01T00:00:00.000000Z``.
    """
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": _meta(ident, LEASE_NAME),
        "spec": {
            "holderIdentity": ident.kernel_id,
            "leaseDurationSeconds": duration_seconds,
            "acquireTime": renew_time,
            "renewTime": renew_time,
        },
    }


def pod(ident: SandboxIdentity, spec: PodSpec) -> dict[str, Any]:
    """The sandbox pod: passes Pod Security "restricted" as created; stdin open for attach.

    HOME and /tmp are tmpfs (:data:`SCRATCH_MEDIUM`): what a cell writes there is memory of the
    container, within ``memory_limit`` (:meth:`.settings.KubernetesSandbox.validate` keeps room for
    the interpreter beside them).
    """
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 1,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_UID,
            "fsGroup": SANDBOX_UID,
            "seccompProfile": seccomp_profile(spec.seccomp_profile),
        },
        "containers": [
            {
                "name": CONTAINER_NAME,
                "image": spec.image,
                "imagePullPolicy": spec.image_pull_policy,
                "command": agent_command(spec.interpreter, spec.agent_file, spec.network_policy_wait, spec.shell_as_init),
                "stdin": True,
                "stdinOnce": False,
                "tty": False,
                "workingDir": SANDBOX_HOME,
                "env": [
                    {"name": "HOME", "value": SANDBOX_HOME},
                    {"name": "PATH", "value": SANDBOX_PATH},
                    {"name": "LANG", "value": "C.UTF-8"},
                ],
                "resources": {
                    "requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
                    "limits": {"cpu": spec.cpu_limit, "memory": spec.memory_limit},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                    "privileged": False,
                },
                "volumeMounts": [
                    {"name": "home", "mountPath": SANDBOX_HOME},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "agent", "mountPath": AGENT_DIR, "readOnly": True},
                ],
            }
        ],
        "volumes": [
            {"name": "home", "emptyDir": {"medium": SCRATCH_MEDIUM, "sizeLimit": spec.scratch_size}},
            {"name": "tmp", "emptyDir": {"medium": SCRATCH_MEDIUM, "sizeLimit": spec.tmp_size}},
            {"name": "agent", "configMap": {"name": CONFIG_MAP_NAME, "defaultMode": 0o444}},
        ],
    }
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.runtime_class_name:
        pod_spec["runtimeClassName"] = spec.runtime_class_name
    meta = _meta(ident, spec.name)
    meta["labels"]["app.kubernetes.io/name"] = "sandbox"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


@dataclass(frozen=True)
class SandboxObjects:
    """Everything one sandbox is made of, in creation order (the pod last)."""

    namespace: dict[str, Any]
    role_binding: dict[str, Any] | None
    resource_quota: dict[str, Any]
    limit_range: dict[str, Any]
    network_policy: dict[str, Any]
    config_map: dict[str, Any]
    lease: dict[str, Any]
    pod: dict[str, Any]

    def in_order(self) -> list[dict[str, Any]]:
        objects = [self.namespace, self.role_binding, self.resource_quota, self.limit_range,
                   self.network_policy, self.config_map, self.lease, self.pod]
        return [o for o in objects if o is not None]


def sandbox_objects(
    ident: SandboxIdentity,
    quota: QuotaSpec,
    limits: LimitRangeSpec,
    pod_spec: PodSpec,
    agent_source: str,
    lease_seconds: int,
    renew_time: str,
    subject: Subject | None,
    cluster_role: str,
) -> SandboxObjects:
    """All objects of one sandbox; no RoleBinding when ``subject`` or ``cluster_role`` is empty."""
    return SandboxObjects(
        namespace=namespace(ident),
        role_binding=role_binding(ident, subject, cluster_role) if subject and cluster_role else None,
        resource_quota=resource_quota(ident, quota),
        limit_range=limit_range(ident, limits),
        network_policy=network_policy(ident),
        config_map=agent_config_map(ident, pod_spec.agent_file, agent_source),
        lease=heartbeat_lease(ident, lease_seconds, renew_time),
        pod=pod(ident, pod_spec),
    )

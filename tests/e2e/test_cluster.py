"""Proof that the test cluster (tests/cluster/up) is a real, production-like Kubernetes:
nodes, pods, logs, exec/attach through the API server, enforced NetworkPolicy, Pod Security
admission, ResourceQuota, OOM kills, namespace deletion and the pod PID limit.

Run: SANDBOX_KUBECONFIG=$(sudo tests/cluster/up | tail -n1) pytest tests/e2e/test_cluster.py -v
"""

from __future__ import annotations

import json
import time
from typing import Callable

import pytest
from kubernetes import client, stream
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.cluster

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def restricted_security_context() -> client.V1SecurityContext:
    """A container security context that satisfies Pod Security 'restricted'."""
    return client.V1SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        run_as_user=1000,
        run_as_group=1000,
        capabilities=client.V1Capabilities(drop=["ALL"]),
        seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
    )


def make_pod(
    name: str,
    image: str,
    command: list[str],
    *,
    restart: str = "Never",
    memory_limit: str = "128Mi",
    memory_request: str = "32Mi",
    labels: dict[str, str] | None = None,
    stdin: bool = False,
    port: int | None = None,
) -> client.V1Pod:
    container = client.V1Container(
        name="main",
        image=image,
        image_pull_policy="Never",
        command=command,
        stdin=stdin,
        stdin_once=False,
        tty=False,
        security_context=restricted_security_context(),
        resources=client.V1ResourceRequirements(
            requests={"cpu": "10m", "memory": memory_request},
            limits={"memory": memory_limit},
        ),
        volume_mounts=[client.V1VolumeMount(name="tmp", mount_path="/tmp")],
        ports=[client.V1ContainerPort(container_port=port)] if port else None,
    )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {"app": name}),
        spec=client.V1PodSpec(
            restart_policy=restart,
            containers=[container],
            automount_service_account_token=False,
            termination_grace_period_seconds=0,
            enable_service_links=False,
            volumes=[client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource(size_limit="64Mi"))],
        ),
    )


def wait_pod(
    core: client.CoreV1Api,
    ns: str,
    name: str,
    predicate: Callable[[client.V1Pod], bool],
    timeout: float = 60,
    what: str = "condition",
) -> client.V1Pod:
    deadline = time.monotonic() + timeout
    pod = None
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, ns)
        if predicate(pod):
            return pod
        time.sleep(0.5)
    events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
    msgs = [f"{e.reason}: {e.message}" for e in events.items]
    raise AssertionError(
        f"pod {ns}/{name} did not reach {what} within {timeout}s; status={pod.status if pod else None}; events={msgs}"
    )


def running(pod: client.V1Pod) -> bool:
    statuses = pod.status.container_statuses or []
    return pod.status.phase == "Running" and bool(statuses) and all(s.ready for s in statuses)


def finished(pod: client.V1Pod) -> bool:
    return pod.status.phase in ("Succeeded", "Failed")


def run_pod(core: client.CoreV1Api, ns: str, pod: client.V1Pod, timeout: float = 60) -> client.V1Pod:
    core.create_namespaced_pod(ns, pod)
    return wait_pod(core, ns, pod.metadata.name, running, timeout, "Running+Ready")


def exec_capture(
    api: client.ApiClient, ns: str, pod: str, command: list[str], timeout: float = 60
) -> tuple[int, str, str]:
    """Exec through the API server (websocket); return (exit code, stdout, stderr)."""
    core = client.CoreV1Api(api)
    resp = stream.stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        ns,
        command=command,
        stdin=False,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    out, err = [], []
    deadline = time.monotonic() + timeout
    while resp.is_open() and time.monotonic() < deadline:
        resp.update(timeout=1)
        if resp.peek_stdout():
            out.append(resp.read_stdout())
        if resp.peek_stderr():
            err.append(resp.read_stderr())
    assert not resp.is_open(), f"exec {command} did not finish within {timeout}s"
    resp.close()
    return resp.returncode, "".join(out), "".join(err)


@pytest.fixture
def stream_api(kubeconfig: str):
    """A separate ApiClient for websocket streams (stream() swaps the client's request method)."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


def node_internal_ip(core: client.CoreV1Api) -> str:
    node = core.list_node().items[0]
    return next(a.address for a in node.status.addresses if a.type == "InternalIP")


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def test_node_is_ready_and_version_is_pinned(core_v1: client.CoreV1Api, k8s_api) -> None:
    version = client.VersionApi(k8s_api).get_code()
    assert version.git_version.startswith("v1.34."), version.git_version
    assert version.git_tree_state == "clean"
    nodes = core_v1.list_node().items
    assert len(nodes) == 1, [n.metadata.name for n in nodes]
    node = nodes[0]
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready.get("Ready") == "True", node.status.conditions
    assert node.status.node_info.kubelet_version == version.git_version
    assert node.spec.pod_cidr, "the controller-manager allocated no pod CIDR"


def test_pod_runs_and_logs_are_read(core_v1: client.CoreV1Api, namespace: str, sandbox_images: dict[str, str]) -> None:
    script = (
        "import os, json, ssl, socket, subprocess, ctypes; "
        "open('/tmp/x', 'w').write('ok'); "
        "print('hello from', os.getuid(), os.getgid(), os.environ['HOME'], flush=True)"
    )
    pod = make_pod("hello", sandbox_images["SANDBOX_IMAGE_PYTHON"], ["python3", "-c", script])
    core_v1.create_namespaced_pod(namespace, pod)
    pod = wait_pod(core_v1, namespace, "hello", finished, 60, "completion")
    logs = core_v1.read_namespaced_pod_log("hello", namespace)
    assert pod.status.phase == "Succeeded", (pod.status, logs)
    assert "hello from 1000 1000 /home/sandbox" in logs


@pytest.mark.parametrize(
    ("key", "command", "expected"),
    [
        ("SANDBOX_IMAGE_NODE", ["node", "-e", "console.log('node', process.getuid())"], "node 1000"),
        (
            "SANDBOX_IMAGE_BASH",
            [
                "bash",
                "-c",
                "f=$(mktemp); echo abc | dd status=none of=$f; wc -c <$f; "
                "find /etc -name passwd | grep -c passwd | sed s/1/one/; mkfifo /tmp/p && echo fifo",
            ],
            "4\none\nfifo",
        ),
    ],
)
def test_other_sandbox_images_run(
    core_v1: client.CoreV1Api,
    namespace: str,
    sandbox_images: dict[str, str],
    key: str,
    command: list[str],
    expected: str,
) -> None:
    core_v1.create_namespaced_pod(namespace, make_pod("img", sandbox_images[key], command))
    pod = wait_pod(core_v1, namespace, "img", finished, 60, "completion")
    logs = core_v1.read_namespaced_pod_log("img", namespace)
    assert pod.status.phase == "Succeeded", (pod.status, logs)
    assert expected in logs


def test_exec_streams_through_api_server(
    core_v1: client.CoreV1Api, stream_api, namespace: str, sandbox_images: dict[str, str]
) -> None:
    run_pod(
        core_v1,
        namespace,
        make_pod("sleeper", sandbox_images["SANDBOX_IMAGE_PYTHON"], ["sleep", "3600"]),
    )
    code, out, err = exec_capture(
        stream_api, namespace, "sleeper", ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"]
    )
    assert (code, out, err) == (3, "to-stdout\n", "to-stderr\n")

    # stdin through exec. The Python client speaks the v4 channel protocol, which cannot
    # half-close stdin, so the program reads one line instead of waiting for EOF.
    core = client.CoreV1Api(stream_api)
    resp = stream.stream(
        core.connect_get_namespaced_pod_exec,
        "sleeper",
        namespace,
        command=["python3", "-c", "import sys; print(sys.stdin.readline().upper(), end='')"],
        stdin=True,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    resp.write_stdin("shout\n")
    out = ""
    deadline = time.monotonic() + 30
    while resp.is_open() and time.monotonic() < deadline:
        resp.update(timeout=1)
        if resp.peek_stdout():
            out += resp.read_stdout()
    resp.close()
    assert out == "SHOUT\n"
    assert resp.returncode == 0


def test_attach_with_stdin(
    core_v1: client.CoreV1Api, stream_api, namespace: str, sandbox_images: dict[str, str]
) -> None:
    echo = (
        "import sys\n"
        "print('ready', flush=True)\n"
        "for line in sys.stdin:\n"
        "    print('echo:' + line.strip(), flush=True)\n"
    )
    run_pod(
        core_v1,
        namespace,
        make_pod("echo", sandbox_images["SANDBOX_IMAGE_PYTHON"], ["python3", "-u", "-c", echo], stdin=True),
    )
    core = client.CoreV1Api(stream_api)
    resp = stream.stream(
        core.connect_get_namespaced_pod_attach,
        "echo",
        namespace,
        stdin=True,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    try:
        resp.write_stdin("hello attach\n")
        out = ""
        deadline = time.monotonic() + 30
        while "echo:hello attach" not in out and time.monotonic() < deadline:
            resp.update(timeout=1)
            if resp.peek_stdout():
                out += resp.read_stdout()
        # Output written before the attach ('ready') is not replayed to an attach.
        assert "echo:hello attach" in out, out
    finally:
        resp.close()
    # The same output is in the container log.
    assert "echo:hello attach" in core_v1.read_namespaced_pod_log("echo", namespace)


PROBE = r"""
import json, socket, sys
res = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
        res[target] = "open"
    except OSError as e:
        res[target] = type(e).__name__
    finally:
        s.close()
print(json.dumps(res))
"""


def probe(api: client.ApiClient, ns: str, pod: str, targets: list[str]) -> dict[str, str]:
    code, out, err = exec_capture(api, ns, pod, ["python3", "-c", PROBE, *targets])
    assert code == 0, (out, err)
    return json.loads(out)


def test_deny_all_network_policy_is_enforced(
    core_v1: client.CoreV1Api,
    k8s_api,
    stream_api,
    namespace_factory,
    sandbox_images: dict[str, str],
) -> None:
    image = sandbox_images["SANDBOX_IMAGE_PYTHON"]
    open_ns = namespace_factory(prefix="open")
    locked_ns = namespace_factory(prefix="locked")
    client.NetworkingV1Api(k8s_api).create_namespaced_network_policy(
        locked_ns,
        client.V1NetworkPolicy(
            metadata=client.V1ObjectMeta(name="deny-all"),
            spec=client.V1NetworkPolicySpec(pod_selector=client.V1LabelSelector(), policy_types=["Ingress", "Egress"]),
        ),
    )
    server = make_pod("web", image, ["python3", "-m", "http.server", "8080"], port=8080)
    server.spec.containers[0].readiness_probe = client.V1Probe(
        tcp_socket=client.V1TCPSocketAction(port=8080), period_seconds=1
    )
    core_v1.create_namespaced_pod(open_ns, server)
    core_v1.create_namespaced_pod(open_ns, make_pod("client", image, ["sleep", "3600"]))
    core_v1.create_namespaced_pod(locked_ns, make_pod("client", image, ["sleep", "3600"]))
    core_v1.create_namespaced_pod(
        locked_ns, make_pod("web", image, ["python3", "-m", "http.server", "8080"], port=8080)
    )
    web = wait_pod(core_v1, open_ns, "web", running, 60, "Running+Ready")
    wait_pod(core_v1, open_ns, "client", running, 60, "Running+Ready")
    wait_pod(core_v1, locked_ns, "client", running, 60, "Running+Ready")
    locked_web = wait_pod(core_v1, locked_ns, "web", running, 60, "Running+Ready")

    targets = [
        f"{web.status.pod_ip}:8080",  # pod to pod
        "10.96.0.1:443",  # the API server's ClusterIP (through kube-proxy's DNAT)
        f"{node_internal_ip(core_v1)}:6443",  # the API server on the node
    ]
    # Unrestricted namespace: everything answers (so a block below is the policy's doing).
    assert probe(stream_api, open_ns, "client", targets) == {t: "open" for t in targets}

    # kube-router programs a new pod's rules shortly after it starts; allow it a few seconds.
    deadline = time.monotonic() + 20
    while True:
        res = probe(stream_api, locked_ns, "client", targets)
        if all(v != "open" for v in res.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(v != "open" for v in res.values()), f"deny-all egress not enforced: {res}"

    # Ingress into the locked namespace is blocked too.
    into = f"{locked_web.status.pod_ip}:8080"
    assert probe(stream_api, open_ns, "client", [into])[into] != "open"


def test_pod_security_restricted_rejects_privileged(
    core_v1: client.CoreV1Api, namespace_factory, sandbox_images: dict[str, str]
) -> None:
    ns = namespace_factory(
        labels={
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
    )
    image = sandbox_images["SANDBOX_IMAGE_PYTHON"]
    bad = make_pod("privileged", image, ["true"])
    bad.spec.containers[0].security_context = client.V1SecurityContext(privileged=True)
    with pytest.raises(ApiException) as info:
        core_v1.create_namespaced_pod(ns, bad)
    assert info.value.status == 403
    assert "violates PodSecurity" in info.value.body and "privileged" in info.value.body

    good = make_pod(
        "restricted",
        image,
        [
            "python3",
            "-c",
            "import os; open('/tmp/f','w').write('x'); "
            "print('uid', os.getuid(), 'ro-root', not os.access('/', os.W_OK))",
        ],
    )
    core_v1.create_namespaced_pod(ns, good)
    pod = wait_pod(core_v1, ns, "restricted", finished, 60, "completion")
    logs = core_v1.read_namespaced_pod_log("restricted", ns)
    assert pod.status.phase == "Succeeded", (pod.status, logs)
    assert "uid 1000 ro-root True" in logs


def test_resource_quota_rejects_pod_over_quota(
    core_v1: client.CoreV1Api, namespace: str, sandbox_images: dict[str, str]
) -> None:
    core_v1.create_namespaced_resource_quota(
        namespace,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="small"),
            spec=client.V1ResourceQuotaSpec(hard={"requests.memory": "64Mi", "pods": "2"}),
        ),
    )
    deadline = time.monotonic() + 30
    while not (core_v1.read_namespaced_resource_quota("small", namespace).status.hard or {}):
        assert time.monotonic() < deadline, "the quota controller never filled in status.hard"
        time.sleep(0.5)
    big = make_pod(
        "big", sandbox_images["SANDBOX_IMAGE_PYTHON"], ["true"], memory_request="128Mi", memory_limit="128Mi"
    )
    with pytest.raises(ApiException) as info:
        core_v1.create_namespaced_pod(namespace, big)
    assert info.value.status == 403
    assert "exceeded quota" in info.value.body, info.value.body


def test_pod_over_memory_limit_is_oom_killed(
    core_v1: client.CoreV1Api, namespace: str, sandbox_images: dict[str, str]
) -> None:
    hog = "b = []\nwhile True:\n    b.append(b'x' * (16 << 20))\n"
    pod = make_pod("hog", sandbox_images["SANDBOX_IMAGE_PYTHON"], ["python3", "-c", hog], memory_limit="64Mi")
    core_v1.create_namespaced_pod(namespace, pod)
    pod = wait_pod(core_v1, namespace, "hog", finished, 60, "termination")
    term = pod.status.container_statuses[0].state.terminated
    assert term is not None and term.reason == "OOMKilled", pod.status.container_statuses
    assert term.exit_code == 137


def test_namespace_deletion_completes(
    core_v1: client.CoreV1Api, namespace_factory, sandbox_images: dict[str, str]
) -> None:
    ns = namespace_factory()
    core_v1.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"), data={"a": "b"})
    )
    run_pod(core_v1, ns, make_pod("p", sandbox_images["SANDBOX_IMAGE_PYTHON"], ["sleep", "3600"]))
    core_v1.delete_namespace(ns)
    deadline = time.monotonic() + 60
    while True:
        try:
            core_v1.read_namespace(ns)
        except ApiException as exc:
            assert exc.status == 404
            break
        assert time.monotonic() < deadline, f"namespace {ns} still exists after 60s"
        time.sleep(1)


def test_pid_limit_contains_fork_bomb(
    core_v1: client.CoreV1Api, namespace: str, sandbox_images: dict[str, str]
) -> None:
    # A bounded fork bomb: fork until the kernel refuses, report how far it got, clean up.
    bomb = (
        "import os, signal\n"
        "kids = []\n"
        "try:\n"
        "    for _ in range(2000):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            signal.pause()\n"
        "            os._exit(0)\n"
        "        kids.append(pid)\n"
        "    print('UNLIMITED', len(kids), flush=True)\n"
        "except OSError as e:\n"
        "    print('BLOCKED', len(kids), e.errno, flush=True)\n"
        "for k in kids:\n"
        "    os.kill(k, signal.SIGKILL)\n"
        "for k in kids:\n"
        "    os.waitpid(k, 0)\n"
    )
    pod = make_pod("bomb", sandbox_images["SANDBOX_IMAGE_PYTHON"], ["python3", "-c", bomb], memory_limit="512Mi")
    core_v1.create_namespaced_pod(namespace, pod)
    pod = wait_pod(core_v1, namespace, "bomb", finished, 90, "completion")
    logs = core_v1.read_namespaced_pod_log("bomb", namespace)
    assert pod.status.phase == "Succeeded", (pod.status, logs)
    word, count, *_ = logs.split()
    assert word == "BLOCKED" and int(count) < 256, logs
    node = core_v1.list_node().items[0]
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"


def test_cluster_dns_serves_cluster_local_only(
    core_v1: client.CoreV1Api, stream_api, namespace: str, sandbox_images: dict[str, str]
) -> None:
    run_pod(
        core_v1,
        namespace,
        make_pod("dns", sandbox_images["SANDBOX_IMAGE_PYTHON"], ["sleep", "3600"]),
    )
    script = (
        "import socket\n"
        "print(socket.gethostbyname('kubernetes.default.svc.cluster.local'))\n"
        "try:\n"
        "    socket.getaddrinfo('example.invalid', 80)\n"
        "    print('resolved')\n"
        "except socket.gaierror:\n"
        "    print('unresolved')\n"
    )
    code, out, err = exec_capture(stream_api, namespace, "dns", ["python3", "-c", script])
    assert code == 0, err
    assert out.split() == ["10.96.0.1", "unresolved"], (out, err)


def test_kubeconfig_for_service_account(k8s_api, core_v1: client.CoreV1Api, namespace: str, tmp_path) -> None:
    import subprocess
    from pathlib import Path

    from kubernetes import config

    core_v1.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="kernel"))
    )
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pods-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="kernel-pods-reader"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pods-reader"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="kernel", namespace=namespace)],
        ),
    )
    script = Path(__file__).resolve().parents[1] / "cluster" / "kubeconfig-for"
    out = tmp_path / "kernel.kubeconfig"
    res = subprocess.run(
        [str(script), namespace, "kernel", str(out), "10m"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == str(out)

    sa_api = config.new_client_from_config(config_file=str(out))
    try:
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:kernel"
        sa_core = client.CoreV1Api(sa_api)
        assert sa_core.list_namespaced_pod(namespace).items == []
        with pytest.raises(ApiException) as info:
            sa_core.list_node()
        assert info.value.status == 403
    finally:
        sa_api.close()

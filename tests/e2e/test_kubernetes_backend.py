"""The Kubernetes backend on the real test cluster, with kernels running as the k8s/rbac service account.

Each test starts real Sandbox kernels through jupyter_client.KernelManager (kernelspecs in a
temporary JUPYTER_PATH) and checks what Kubernetes actually did with an admin client.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from fixtures_kubernetes import SA_USER, K8sKernel, namespace_exists, run_cli, wait_until

pytestmark = pytest.mark.cluster

Start = Callable[..., K8sKernel]


def test_python_cells_keep_state_in_a_restricted_pod(k8s_kernel: Start, core_v1: client.CoreV1Api) -> None:
    kernel = k8s_kernel("python")
    assert kernel.run("x = 41").reply["status"] == "ok"
    assert kernel.run("x + 1").result == "42"
    who = kernel.run(
        "import os, sys; print(os.getuid(), os.getgid(), os.getcwd(), sorted(os.environ), sys.version_info[0])"
    )
    uid, gid, cwd, _names = who.stdout.split(" ", 3)
    assert (uid, gid, cwd) == ("1000", "1000", "/home/sandbox")
    assert "KUBERNETES_SERVICE_HOST" not in who.stdout and "HOME" in who.stdout
    # The root file system is read-only; HOME is the writable scratch volume.
    probe = kernel.run(
        "import pathlib\n"
        "try:\n    open('/etc/x', 'w')\nexcept OSError as e:\n    print('root', e.errno)\n"
        "pathlib.Path('f.txt').write_text('kept')\nprint(pathlib.Path('/home/sandbox/f.txt').read_text())\n"
        "print(pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount').exists())"
    )
    assert probe.stdout.split() == ["root", "30", "kept", "False"]  # EROFS; no service account token
    status = kernel.run("%sandbox status").stdout
    ns = kernel.namespace()
    assert ns in status and "Running on node" in status and "memory 256Mi" in status
    quota = kernel.run("%sandbox quota").stdout
    assert "limits.memory" in quota and "512Mi" in quota
    assert (
        "deny" in kernel.run("%sandbox policy").stdout.lower() or "no ingress" in kernel.run("%sandbox policy").stdout
    )
    assert "kind: Pod" in kernel.run("%sandbox manifests").stdout
    # The sandbox was made by the service account, not by an admin.
    meta = core_v1.read_namespace(ns).metadata
    assert meta.annotations["sandbox-kernel/user"] == SA_USER
    assert meta.labels["sandbox-kernel/owner"] == "sandbox-kernel"


def test_namespace_carries_exactly_the_designed_objects(k8s_kernel: Start, k8s_api: client.ApiClient) -> None:
    kernel = k8s_kernel("python")
    assert kernel.run("1").result == "1"
    ns = kernel.namespace()
    core = client.CoreV1Api(k8s_api)
    labels = core.read_namespace(ns).metadata.labels
    assert {k: v for k, v in labels.items() if k.startswith("pod-security")} == {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted",
    }
    assert labels["app.kubernetes.io/managed-by"] == "sandbox-kernel"
    assert labels["sandbox-kernel/language"] == "python"
    assert labels["sandbox-kernel/kernel-id"] == kernel.kernel_id
    quotas = core.list_namespaced_resource_quota(ns).items
    assert [q.spec.hard for q in quotas] == [
        {
            "requests.cpu": "500m",
            "requests.memory": "256Mi",
            "limits.cpu": "1",
            "limits.memory": "512Mi",
            "pods": "3",
            "persistentvolumeclaims": "0",
            "services": "0",
        }
    ]
    (limit_range,) = core.list_namespaced_limit_range(ns).items
    (item,) = limit_range.spec.limits
    assert (item.type, item.max, item.min, item.default, item.default_request) == (
        "Container",
        {"cpu": "500m", "memory": "256Mi"},
        {"cpu": "10m", "memory": "10Mi"},
        {"cpu": "250m", "memory": "128Mi"},
        {"cpu": "100m", "memory": "64Mi"},
    )
    (policy,) = client.NetworkingV1Api(k8s_api).list_namespaced_network_policy(ns).items
    assert policy.spec.pod_selector.match_labels is None and policy.spec.pod_selector.match_expressions is None
    assert policy.spec.policy_types == ["Ingress", "Egress"]
    assert policy.spec.ingress is None and policy.spec.egress is None
    config_maps = {c.metadata.name for c in core.list_namespaced_config_map(ns).items} - {"kube-root-ca.crt"}
    assert config_maps == {"sandbox-agent"}
    (lease,) = client.CoordinationV1Api(k8s_api).list_namespaced_lease(ns).items
    assert (lease.metadata.name, lease.spec.holder_identity) == ("sandbox-heartbeat", kernel.kernel_id)
    (binding,) = client.RbacAuthorizationV1Api(k8s_api).list_namespaced_role_binding(ns).items
    assert binding.role_ref.name == "sandbox-kernel-sandbox"
    assert [(s.kind, s.namespace, s.name) for s in binding.subjects] == [
        ("ServiceAccount", "sandbox-kernel-system", "sandbox-kernel")
    ]
    (pod,) = core.list_namespaced_pod(ns).items
    spec = pod.spec
    assert (spec.restart_policy, spec.automount_service_account_token, spec.enable_service_links) == (
        "Never",
        False,
        False,
    )
    assert spec.active_deadline_seconds == 43200
    sc = spec.security_context
    assert (sc.run_as_non_root, sc.run_as_user, sc.run_as_group, sc.fs_group, sc.seccomp_profile.type) == (
        True,
        1000,
        1000,
        1000,
        "RuntimeDefault",
    )
    (container,) = spec.containers
    csc = container.security_context
    assert (csc.allow_privilege_escalation, csc.capabilities.drop, csc.read_only_root_filesystem) == (
        False,
        ["ALL"],
        True,
    )
    assert container.resources.requests == {"cpu": "100m", "memory": "64Mi"}
    assert container.resources.limits == {"cpu": "500m", "memory": "256Mi"}
    assert (container.stdin, bool(container.tty), container.working_dir) == (True, False, "/home/sandbox")
    volumes = {v.name: v for v in spec.volumes}
    assert (volumes["home"].empty_dir.medium, volumes["home"].empty_dir.size_limit) == ("Memory", "64Mi")
    assert (volumes["tmp"].empty_dir.medium, volumes["tmp"].empty_dir.size_limit) == ("Memory", "16Mi")
    assert volumes["agent"].config_map.name == "sandbox-agent"
    # Nothing else: no services, no secrets the kernel made, one pod.
    assert core.list_namespaced_service(ns).items == []


def test_pod_passes_restricted_admission_as_created(k8s_kernel: Start, core_v1: client.CoreV1Api) -> None:
    kernel = k8s_kernel("python")
    assert kernel.run("1").result == "1"
    ns = kernel.namespace()
    (pod,) = core_v1.list_namespaced_pod(ns).items
    assert pod.status.phase == "Running"
    # The same pod spec, resubmitted (server-side dry run), is admitted by the enforcing namespace…
    body = client.ApiClient().sanitize_for_serialization(pod)
    body["metadata"] = {"name": "dry-run-copy", "namespace": ns}
    body.pop("status")
    body["spec"].pop("nodeName")
    admitted = core_v1.create_namespaced_pod(ns, body, dry_run="All")
    assert admitted.metadata.name == "dry-run-copy"
    # …while the namespace really enforces "restricted": a variant adding a capability is refused.
    body["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_RAW"]
    with pytest.raises(ApiException) as refused:
        core_v1.create_namespaced_pod(ns, body, dry_run="All")
    assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body


def test_out_of_memory_is_reported_and_the_next_cell_gets_a_fresh_pod(
    k8s_kernel: Start, core_v1: client.CoreV1Api
) -> None:
    kernel = k8s_kernel("python")
    assert kernel.run("x = 1").reply["status"] == "ok"
    oom = kernel.run("b = bytearray(400*1024*1024)\nb[::4096] = b'x' * len(b[::4096])")
    assert oom.reply["status"] == "error"
    assert oom.error is not None and oom.error["ename"] == "OutOfMemory"
    assert "out of memory (limit 256Mi)" in oom.error["evalue"]
    ns = kernel.namespace()
    after = kernel.run("y = 2\ny * 21")
    assert after.result == "42"
    assert kernel.run("x").error["ename"] == "NameError"  # a new pod: earlier variables are gone
    pods = {p.metadata.name: p for p in core_v1.list_namespaced_pod(ns).items}
    assert "sandbox-2" in pods and pods["sandbox-2"].status.phase == "Running"
    assert "sandbox-1" not in pods or pods["sandbox-1"].metadata.deletion_timestamp is not None


def test_filling_the_scratch_volume_fails_at_write_time_and_the_sandbox_survives(
    k8s_kernel: Start, core_v1: client.CoreV1Api
) -> None:
    """HOME (scratch_size 64Mi) and /tmp (tmp_size 16Mi) are memory-backed emptyDirs: tmpfs refuses
    the write past the size at once (ENOSPC), where a disk-backed emptyDir let 1024 MiB reach the
    node's disk and then had the pod evicted. The full volumes stay within the pod's memory limit,
    so the kubelet neither evicts nor OOM-kills the pod: the variables survive."""
    kernel = k8s_kernel("python")
    assert kernel.run("x = 'kept'").reply["status"] == "ok"
    fill = (
        "def fill(path, mib):\n"
        "    try:\n"
        "        with open(path, 'wb') as f:\n"
        "            for _ in range(mib):\n"
        "                f.write(b'x' * 2**20)\n"
        "                f.flush()\n"
        "        return 'wrote all'\n"
        "    except OSError as e:\n"
        "        import os\n"
        "        return f'{e.errno} {e.strerror} after {os.path.getsize(path) // 2**20} MiB'\n"
        "print(fill('big', 100)); print(fill('/tmp/big', 40))"
    )
    cell = kernel.run(fill)
    assert cell.reply["status"] == "ok", cell.outputs
    home, tmp = cell.stdout.splitlines()
    assert home.startswith("28 No space left on device after ") and int(home.split()[-2]) <= 64, home
    assert tmp.startswith("28 No space left on device after ") and int(tmp.split()[-2]) <= 16, tmp
    mounts = kernel.run("print(sorted(l.split()[1] for l in open('/proc/self/mounts') if l.split()[2] == 'tmpfs'))")
    assert "'/home/sandbox'" in mounts.stdout and "'/tmp'" in mounts.stdout, mounts.stdout
    # The eviction manager looks every 10 s: the pod (and its variables) must still be there after it.
    assert kernel.run("import time; time.sleep(12); x").result == "'kept'"
    pods = core_v1.list_namespaced_pod(kernel.namespace()).items
    assert [(p.metadata.name, p.status.phase) for p in pods] == [("sandbox-1", "Running")]
    assert kernel.run("import os; os.remove('big'); open('small', 'wb').write(b'y' * 2**20)").reply["status"] == "ok"


def test_network_is_denied_from_a_cell(
    k8s_kernel: Start, core_v1: client.CoreV1Api, namespace: str, sandbox_images: dict[str, str]
) -> None:
    # A pod to try to reach, in an ordinary namespace.
    target = core_v1.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "target"},
            "spec": {
                "containers": [
                    {
                        "name": "http",
                        "image": sandbox_images["SANDBOX_IMAGE_PYTHON"],
                        "command": ["python3", "-m", "http.server", "8080"],
                    }
                ]
            },
        },
    )
    kernel = k8s_kernel("python")
    ip = wait_until(
        lambda: core_v1.read_namespaced_pod(target.metadata.name, namespace).status.pod_ip, 60, what="target pod IP"
    )
    node_ip = next(a.address for a in core_v1.list_node().items[0].status.addresses if a.type == "InternalIP")
    # Control: the target answers (from the node, outside any policy).
    wait_until(lambda: _http_ok(f"http://{ip}:8080/"), 60, what="target pod to serve HTTP")
    code = f"""
import socket
def tcp(host, port):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); return 'open'
    except Exception as e:
        return type(e).__name__
    finally:
        s.close()
def dns(server):
    q = b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x0akubernetes\\x07default\\x03svc\\x07cluster\\x05local\\x00\\x00\\x01\\x00\\x01'
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    try:
        s.sendto(q, (server, 53)); s.recv(512); return 'answered'
    except Exception as e:
        return type(e).__name__
print('api-service', tcp('10.96.0.1', 443))
print('api-node', tcp('{node_ip}', 6443))
print('pod', tcp('{ip}', 8080))
print('dns', dns('10.96.0.10'))
"""
    results = dict(line.split() for line in kernel.run(code, timeout=60).stdout.strip().splitlines())
    assert set(results) == {"api-service", "api-node", "pod", "dns"}
    assert all(v != "open" and v != "answered" for v in results.values()), results


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_shutdown_deletes_the_namespace(k8s_kernel: Start, core_v1: client.CoreV1Api) -> None:
    kernel = k8s_kernel("python")
    assert kernel.run("1 + 1").result == "2"
    ns = kernel.namespace()
    started = time.monotonic()
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=False)
    assert not namespace_exists(core_v1, ns), "the namespace must be gone when shutdown returns"
    assert time.monotonic() - started < 60


def test_gc_reclaims_the_namespace_of_a_killed_kernel(
    k8s_kernel: Start, core_v1: client.CoreV1Api, kernel_env: dict[str, str], namespace_factory: Callable[..., str]
) -> None:
    kernel = k8s_kernel("python", "--KubernetesSandbox.heartbeat_interval=1", "--KubernetesSandbox.heartbeat_ttl=4")
    assert kernel.run("1").result == "1"
    ns = kernel.namespace()
    # A namespace carrying our label but not our name prefix, and one with neither: gc must not touch them.
    decoy = namespace_factory(labels={"app.kubernetes.io/managed-by": "sandbox-kernel"})
    listed = run_cli(kernel_env, "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(ns))
    assert "sandbox-kernel" in row and "python" in row and kernel.kernel_id in row and "renewed" in row
    # While the kernel lives it renews its heartbeat, so gc keeps the namespace even after the TTL.
    time.sleep(6)
    alive = run_cli(kernel_env, "gc")
    assert alive.returncode == 0, alive.stderr
    assert f"kept {ns}" in alive.stdout
    os.kill(kernel.pid, signal.SIGKILL)
    time.sleep(6)  # heartbeat_ttl (4 s) passes without renewals
    assert namespace_exists(core_v1, ns), "nothing deletes a crashed kernel's namespace but gc"
    dry = run_cli(kernel_env, "gc", "--dry-run")
    assert f"would delete {ns}" in dry.stdout and namespace_exists(core_v1, ns)
    reclaimed = run_cli(kernel_env, "gc")
    assert reclaimed.returncode == 0, reclaimed.stdout + reclaimed.stderr
    assert f"deleted {ns}: heartbeat expired" in reclaimed.stdout
    wait_until(lambda: not namespace_exists(core_v1, ns), 60, what=f"namespace {ns} to be deleted")
    assert (
        namespace_exists(core_v1, decoy)
        and namespace_exists(core_v1, "default")
        and namespace_exists(core_v1, "kube-system")
    )
    assert decoy not in reclaimed.stdout


def test_interrupt_stops_a_sleeping_cell_within_two_seconds(k8s_kernel: Start) -> None:
    kernel = k8s_kernel("python")
    assert kernel.run("import time\nx = 'kept'").reply["status"] == "ok"
    msg_id = kernel.kc.execute("time.sleep(100)")
    time.sleep(1.5)
    asked = time.monotonic()
    kernel.km.interrupt_kernel()
    reply = kernel.kc.get_shell_msg(timeout=10)
    elapsed = time.monotonic() - asked
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    assert elapsed < 2.0, f"interrupt took {elapsed:.2f} s"
    kernel.drain_iopub()
    assert kernel.run("x").result == "'kept'"  # the agent obeyed: state survives


def test_timeout_stops_a_long_cell(k8s_kernel: Start) -> None:
    kernel = k8s_kernel("python")
    started = time.monotonic()
    cell = kernel.run("%timeout 2\nimport time\ntime.sleep(30)")
    assert cell.error is not None and cell.error["ename"] == "CellTimeout"
    assert time.monotonic() - started < 10
    assert kernel.run("21 * 2").result == "42"


def test_image_pull_error_is_reported_in_seconds(k8s_kernel: Start) -> None:
    started = time.monotonic()
    kernel = k8s_kernel("python", env={"SANDBOX_IMAGE_PYTHON": "localhost/no-such-image:1"})
    cell = kernel.run("1")
    assert cell.error is not None
    assert "localhost/no-such-image:1" in cell.error["evalue"]
    assert "ErrImagePull" in cell.error["evalue"] or "ImagePullBackOff" in cell.error["evalue"]
    assert time.monotonic() - started < 30


def test_an_admission_refusal_is_told_in_the_api_servers_words(k8s_kernel: Start) -> None:
    kernel = k8s_kernel("python", "--KubernetesSandbox.runtime_class_name=no-such-runtime")  # no such RuntimeClass
    started = time.monotonic()
    cell = kernel.run("1")
    assert cell.error is not None and cell.error["ename"] == "AdmissionError"
    assert 'pod rejected: RuntimeClass "no-such-runtime" not found' in cell.error["evalue"]
    assert time.monotonic() - started < 10


def test_node_cells_keep_state(k8s_kernel: Start) -> None:
    kernel = k8s_kernel("node")
    assert kernel.run("let x = 41;").reply["status"] == "ok"
    assert kernel.run("x + 1").result == "42"
    assert "1000" in kernel.run("console.log(process.getuid())").stdout


def test_node_pods_reap_orphaned_processes(k8s_kernel: Start) -> None:
    # Node.js cannot wait for processes it did not start, so its pod keeps /bin/sh as PID 1,
    # which reaps what user code leaves behind; zombies would otherwise fill the pids limit.
    kernel = k8s_kernel("node")
    orphans = "const cp = require('child_process');\nfor (let i = 0; i < 20; i++) cp.execSync('sleep 0.1 & exit 0');"
    assert kernel.run(orphans).reply["status"] == "ok"
    time.sleep(1.5)
    zombies = (
        "const fs = require('fs');\n"
        "const states = fs.readdirSync('/proc').filter((p) => /^\\d+$/.test(p)).map((p) => {\n"
        "  try { return fs.readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1].split(' ')[0]; } catch (e) { return '?'; }\n"
        "});\n"
        "console.log(states.filter((s) => s === 'Z').length, fs.readFileSync('/proc/1/comm', 'utf8').trim())"
    )
    assert kernel.run(zombies).stdout.split() == ["0", "sh"]


def test_bash_cells_keep_state(k8s_kernel: Start) -> None:
    kernel = k8s_kernel("bash")
    assert kernel.run("x=41").reply["status"] == "ok"
    assert kernel.run("echo $((x + 1)); id -u").stdout.split() == ["42", "1000"]


def test_unreachable_api_server_is_reported_and_the_kernel_recovers(
    k8s_kernel: Start, sa_kubeconfig: str, tmp_path: "os.PathLike[str]"
) -> None:
    good = open(sa_kubeconfig).read()
    server = next(line.split("server:", 1)[1].strip() for line in good.splitlines() if "server:" in line)
    dead = server.rsplit(":", 1)[0] + ":1"  # nothing listens on port 1
    path = os.path.join(tmp_path, "flaky.kubeconfig")
    with open(path, "w") as f:
        f.write(good.replace(server, dead))
    kernel = k8s_kernel("python", env={"SANDBOX_KUBECONFIG": path})
    cell = kernel.run("1 + 1")
    assert cell.error is not None and cell.error["ename"] == "ClusterUnreachable"
    assert "could not be reached" in cell.error["evalue"] and dead in cell.error["evalue"]
    assert kernel.km.is_alive()
    with open(path, "w") as f:  # the cluster is back
        f.write(good)
    assert kernel.run("1 + 1").result == "2"


@pytest.mark.parametrize("language", ["python", "node", "bash"])
def test_a_dropped_attach_stream_is_reattached_without_losing_output_or_state(
    language: str, sa_kubeconfig: str, sandbox_images: dict[str, str]
) -> None:
    import asyncio
    import socket

    from sandbox_kernel.config import Sandbox
    from sandbox_kernel.kubernetes.session import KubernetesSandboxSession
    from sandbox_kernel.kubernetes.settings import KubernetesSandbox
    from sandbox_kernel.languages import LANGUAGES
    from sandbox_kernel.session import ErrorOutput, ExecuteResult, Stream

    from agents import COUNT, numbers

    async def collect(session: KubernetesSandboxSession, code: str) -> tuple[str, str, str]:
        result, out, err = "", "", ""
        async for event in session.execute(code):
            if isinstance(event, ExecuteResult):
                result = event.data["text/plain"]
            elif isinstance(event, ErrorOutput):
                result = f"{event.ename}: {event.evalue}"
            elif isinstance(event, Stream) and event.name == "stdout":
                out += event.text
            elif isinstance(event, Stream):
                err += event.text
        return result, out, err

    async def wait_until_async(check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "the stream was not re-attached"
            await asyncio.sleep(0.05)

    async def cut(session: KubernetesSandboxSession) -> None:
        # Break the websocket under the kernel's feet, as a network blip or an API server restart
        # would. The agent keeps writing; the container runtime sends it nowhere until re-attached.
        channel = session._attach
        assert channel is not None
        before = channel.reattached
        channel._stream._ws.sock.sock.shutdown(socket.SHUT_RDWR)
        await wait_until_async(lambda: channel.reattached > before, 20)

    set_x, get_x = {
        "python": ("x = 41", "print(x + 1)"),
        "node": ("var x = 41", "console.log(x + 1)"),
        "bash": ("x=41", "echo $((x + 1))"),
    }[language]

    async def scenario() -> tuple[tuple[str, str, str], tuple[str, str, str], str]:
        settings = KubernetesSandbox(
            kubeconfig=sa_kubeconfig, images={language: sandbox_images[f"SANDBOX_IMAGE_{language.upper()}"]}
        )
        session = KubernetesSandboxSession(
            LANGUAGES[language], Sandbox().limits(), settings, kernel_id=f"reattach-{language}"
        )
        try:
            await session.start()
            await collect(session, set_x)
            await cut(session)  # between cells
            between = await collect(session, get_x)
            running = asyncio.ensure_future(collect(session, COUNT[language](2000, True)))
            for _ in range(2):  # while the cell prints, twice
                await asyncio.sleep(0.5)
                await cut(session)
            assert not running.done(), "the cell ended before the stream was cut"
            during = await running
            return between, during, session.report("status")
        finally:
            await session.close()

    between, during, status = asyncio.run(scenario())
    assert between == ("", "42\n", "")  # the variable survived
    assert during[1] == numbers(2000).decode()  # every line, in order, none twice
    assert during[2] == ""
    assert "re-attached 3 times; 0 bytes of output lost" in status

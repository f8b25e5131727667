"""The study notebooks (notebooks/*.ipynb), executed with nbclient on the real cluster.

Each notebook runs top to bottom on the Sandbox (Python) kernel with the Kubernetes backend (the
kernelspecs of a temporary JUPYTER_PATH), as the k8s/rbac service account. Cells tagged
`raises-exception` may fail; every other cell must not. Then the OUTPUTS are checked against what
the cluster really does: the OOM cell reports out of memory, the uid cell prints 1000, DNS and the
API server are unreachable, and so on. The privileged pod that notebook 03 can only describe is
really created here, and refused, in a namespace labelled exactly like a sandbox. Notebook 05's
RBAC answers and admission refusals, and notebook 06's broken pods (refused, not pulled,
crash-looping) and what describe/logs show of them, are the cluster's own; 06's hidden answers
must name what the cells really showed.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from kubernetes import client
from kubernetes.client.rest import ApiException
from nbclient import NotebookClient

from fixtures_kubernetes import KERNEL_ID_LABEL, REPO, SA_USER, wait_until
from sandbox_kernel.kubernetes import manifests

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NOTEBOOKS = REPO / "notebooks"
LAB_SCENARIOS = ("over-limits", "over-quota", "missing-image", "crash-loop")


class Ran:
    """An executed notebook: its cells by id, and the kernel id its sandbox was labelled with."""

    def __init__(self, nb: Any, kernel_id: str) -> None:
        self.nb = nb
        self.kernel_id = kernel_id
        self.cells = {cell["id"]: cell for cell in nb.cells}

    def outputs(self, cell_id: str) -> list[dict[str, Any]]:
        return list(self.cells[cell_id].get("outputs", []))

    def stdout(self, cell_id: str) -> str:
        return "".join(
            o.get("text", "") for o in self.outputs(cell_id) if o["output_type"] == "stream" and o["name"] == "stdout"
        )

    def result(self, cell_id: str) -> str:
        return "".join(o["data"]["text/plain"] for o in self.outputs(cell_id) if o["output_type"] == "execute_result")

    def error(self, cell_id: str) -> dict[str, Any]:
        errors = [o for o in self.outputs(cell_id) if o["output_type"] == "error"]
        assert errors, f"cell {cell_id!r} was expected to fail but did not: {self.outputs(cell_id)}"
        return errors[0]

    def error_text(self, cell_id: str) -> str:
        error = self.error(cell_id)
        return f"{error['ename']}: {error['evalue']}"


def run_notebook(name: str, kernel_env: dict[str, str], out_dir: Path, kernel_args: tuple[str, ...] = ()) -> Ran:
    """Execute ``notebooks/<name>`` as the service account; keep the executed copy in ``out_dir``.
    ``kernel_args``: the kernel's command-line settings (the operator's, e.g. an allow list)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "sandbox-python"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{name}: commit notebooks with outputs cleared ({cell['id']})"
    kernel_id = str(uuid.uuid4())
    specs = KernelSpecManager(kernel_dirs=[str(Path(kernel_env["JUPYTER_PATH"]) / "kernels")])
    km = KernelManager(kernel_name="sandbox-python", kernel_spec_manager=specs)
    km.shutdown_wait_time = 60.0  # shutdown deletes the sandbox namespace and waits for it
    executed = copy.deepcopy(nb)
    nbclient = NotebookClient(
        executed,
        km=km,
        timeout=180,
        startup_timeout=180,
        allow_errors=False,
        kernel_name="sandbox-python",
        extra_arguments=list(kernel_args),
        resources={"metadata": {"path": str(out_dir)}},
    )
    try:
        nbclient.execute(env={**os.environ, **kernel_env, "SANDBOX_KERNEL_ID": kernel_id})
    finally:
        nbformat.write(executed, out_dir / name)
        # nbclient shuts down only kernels of managers it created itself: a graceful shutdown
        # here, which deletes the sandbox namespace (checked by the `notebook` fixture).
        if nbclient.kc is not None:
            nbclient.kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=False)
    return Ran(executed, kernel_id)


@pytest.fixture
def notebook(kernel_env: dict[str, str], core_v1: client.CoreV1Api, tmp_path: Path) -> Iterator[Any]:
    """``notebook("01-….ipynb")`` executes it; afterwards the kernel's namespace must be gone."""
    ran: list[Ran] = []

    # $NOTEBOOK_OUTPUT_DIR keeps the executed notebooks (e.g. as CI artifacts); else a temp dir.
    out_dir = Path(os.environ.get("NOTEBOOK_OUTPUT_DIR") or tmp_path)
    out_dir.mkdir(parents=True, exist_ok=True)

    def execute(name: str, kernel_args: tuple[str, ...] = ()) -> Ran:
        result = run_notebook(name, kernel_env, out_dir, kernel_args)
        ran.append(result)
        # The first code cell checks the backend (on the local one it stops the notebook:
        # tests/integration/test_notebooks_local.py); here it names the sandbox namespace.
        backend = result.stdout("backend")
        assert re.fullmatch(
            r"Kubernetes backend: this cell ran in a pod of namespace sandbox-[0-9a-f]{8}\n", backend
        ), backend
        return result

    yield execute
    for result in ran:
        selector = f"{KERNEL_ID_LABEL}={result.kernel_id}"
        # nbclient shut the kernel down; shutdown deleted the sandbox namespace.
        wait_until(
            lambda: not core_v1.list_namespace(label_selector=selector).items,
            60,
            what=f"the sandbox namespace of kernel {result.kernel_id} to be gone",
        )


def test_notebooks_are_committed_clean_and_tagged() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == [
        "01-resourcequota-and-limitrange.ipynb",
        "02-networkpolicy.ipynb",
        "03-pod-security.ipynb",
        "04-sandbox-lifecycle.ipynb",
        "05-rbac-and-admission.ipynb",
        "06-troubleshooting-lab.ipynb",
    ]
    expected_failures = {
        "01-resourcequota-and-limitrange.ipynb": {"oom"},
        "02-networkpolicy.ipynb": {"dns", "apiserver", "internet"},
        "03-pod-security.ipynb": {"rootfs"},
        "04-sandbox-lifecycle.ipynb": {"crash"},
        "05-rbac-and-admission.ipynb": set(),
        "06-troubleshooting-lab.ipynb": set(),
    }
    answers = {"06-troubleshooting-lab.ipynb": {f"{s}-answer" for s in LAB_SCENARIOS}}
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        tagged = {c["id"] for c in nb.cells if "raises-exception" in c.get("metadata", {}).get("tags", [])}
        assert tagged == expected_failures[name], name
        # Answers are collapsed in JupyterLab (jupyter.source_hidden) until the learner opens them.
        hidden = {c["id"] for c in nb.cells if c.get("metadata", {}).get("jupyter", {}).get("source_hidden")}
        assert hidden == answers.get(name, set()), name
        assert hidden == {c["id"] for c in nb.cells if "answer" in c.get("metadata", {}).get("tags", [])}, name


def test_01_resourcequota_and_limitrange(notebook: Any) -> None:
    ran = notebook("01-resourcequota-and-limitrange.ipynb")
    status = ran.stdout("status")
    assert re.search(r"namespace\s+sandbox-[0-9a-f]{8}", status), status
    assert "cpu 500m, memory 256Mi (requests 100m / 64Mi)" in status, status
    assert SA_USER in status, "the notebook must run as the service account"
    quota = dict((row.split()[0], row.split()[1:]) for row in ran.stdout("quota").splitlines()[1:])
    assert quota["requests.memory"] == ["64Mi", "256Mi"], quota
    assert quota["limits.memory"] == ["256Mi", "512Mi"], quota
    assert quota["limits.cpu"] == ["500m", "1"], quota
    assert quota["pods"] == ["1", "3"], quota
    assert quota["services"] == ["0", "0"] and quota["persistentvolumeclaims"] == ["0", "0"], quota
    # The limits as the container's cgroup has them.
    cgroup = ran.stdout("cgroup")
    assert "memory limit: 256 MiB" in cgroup, cgroup
    assert "cpu limit: 0.5 cores" in cgroup, cgroup
    # 400 MiB in a 256 MiB container: OOMKilled, reported as such, and the next cell works.
    oom = ran.error_text("oom")
    assert oom.startswith("OutOfMemory:") and "out of memory (limit 256Mi)" in oom, oom
    assert "allocated" not in ran.stdout("oom")
    assert "'hog' still defined: False" in ran.stdout("after")
    quota_after = dict((row.split()[0], row.split()[1:]) for row in ran.stdout("quota-after").splitlines()[1:])
    # The killed pod was replaced, not added to (the quota controller may lag one pod behind).
    assert quota_after["pods"][1] == "3" and quota_after["pods"][0] in ("1", "2"), quota_after
    events = ran.stdout("events-after")
    assert "OOMKilled" in events or "out of memory" in events, events


PROXY_VARIABLES = {
    "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "PIP_PROXY",
    "npm_config_proxy", "npm_config_https_proxy", "NODE_USE_ENV_PROXY",
}  # fmt: skip


@pytest.mark.timeout(1500)  # the proxy fixture may build the JupyterLab image it runs
def test_02_networkpolicy(notebook: Any, proxy: str) -> None:
    """Run as an operator with an allow list would (``pypi.org``), through the test proxy, whose
    test-only hosts file sends pypi.org to the test host pod: nothing leaves the cluster."""
    ran = notebook("02-networkpolicy.ipynb", ("--Sandbox.allow_hosts=pypi.org",))
    namespace = re.search(r"namespace (sandbox-[0-9a-f]{8})", ran.stdout("backend")).group(1)
    policy = ran.stdout("policy")
    assert "NetworkPolicy deny-all selects every pod and allows no ingress and no egress" in policy, policy
    assert "policyTypes:\n  - Ingress\n  - Egress" in policy, policy
    assert "nameserver 10.96.0.10" in ran.stdout("resolv")
    # deny-all still closes everything but the proxy's port.
    dns = ran.error("dns")
    assert dns["ename"] == "gaierror" and "name resolution" in dns["evalue"], dns
    for cell in ("apiserver", "internet"):
        error = ran.error(cell)
        assert error["ename"] in ("TimeoutError", "ConnectionRefusedError", "OSError"), error
    environ = set(ast.literal_eval(ran.result("environ")))
    assert {"HOME", "LANG", "PATH"} | PROXY_VARIABLES <= environ, environ
    assert environ <= {"HOME", "LANG", "PATH", "PYTHONUNBUFFERED"} | PROXY_VARIABLES, environ
    # The allow list at work.
    assert ran.stdout("egress-check") == f"egress proxy at {proxy}:3128\n"
    egress_policy = ran.stdout("egress-policy")
    assert "egress: only HTTP(S) through the shared egress proxy" in egress_policy, egress_policy
    assert "name: egress-proxy" in egress_policy and "port: 3128" in egress_policy, egress_policy
    assert "app.kubernetes.io/name: sandbox-egress-proxy" in egress_policy, egress_policy
    assert "kubernetes.io/metadata.name: sandbox-kernel-system" in egress_policy, egress_policy
    network = ran.stdout("egress-network")
    assert "allowed: pypi.org" in network and "last refused: none" in network, network
    assert ran.stdout("egress-allowed") == "http://pypi.org/simple/ -> 200 OK\n"
    refused = ran.stdout("egress-refused")
    assert refused.startswith("https://example.com/ -> refused or failed: ") and "403" in refused, refused
    assert "example.com is not on the allow list" in refused and "%sandbox allow example.com" in refused, refused
    denied = ran.stdout("egress-deny")
    assert denied.startswith("pypi.org is denied\n"), denied
    assert "http://pypi.org/simple/ -> refused or failed: HTTP Error 403" in denied, denied
    assert "pypi.org is not on the allow list" in denied, denied  # %sandbox deny took it off the list
    allowed_again = ran.stdout("egress-allow")
    assert allowed_again == "pypi.org is allowed\nhttp://pypi.org/simple/ -> 200 OK\n", allowed_again
    after = ran.stdout("egress-network-after")
    assert "last refused (most recent first" in after and "%sandbox allow HOST" in after, after
    first = after.index("  pypi.org:80  pypi.org is not on the allow list")
    assert first < after.index("  example.com:443  example.com is not on the allow list"), after
    events = ran.stdout("egress-events")
    assert re.search(rf"Warning +EgressRefused +namespace/{namespace}: example\.com:443 refused: ", events), events
    assert re.search(rf"EgressRefused +namespace/{namespace}: pypi\.org:80 refused: pypi\.org is not", events)


def test_03_pod_security(notebook: Any) -> None:
    ran = notebook("03-pod-security.ipynb")
    assert ran.stdout("uid").startswith("uid 1000 gid 1000"), ran.stdout("uid")
    rootfs = ran.error("rootfs")
    assert rootfs["ename"] == "OSError" and "Read-only file system" in rootfs["evalue"], rootfs
    assert "scratch space works" in ran.stdout("home") and "/home/sandbox" in ran.stdout("home")
    caps = dict(line.split(":\t") for line in ran.stdout("caps").splitlines())
    for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(caps[cap], 16) == 0, caps
    assert caps["NoNewPrivs"] == "1" and caps["Seccomp"] == "2", caps
    assert ran.stdout("token") == "token directory exists: False\n"
    manifests_text = ran.stdout("manifests")
    assert "readOnlyRootFilesystem: true" in manifests_text and "allowPrivilegeEscalation: false" in manifests_text
    assert "runAsNonRoot: true" in manifests_text and "- ALL" in manifests_text


def test_03_a_privileged_pod_is_really_rejected_as_the_notebook_says(core_v1: client.CoreV1Api) -> None:
    """The markdown of notebook 03 quotes the API server's refusal; make the request and compare."""
    name = f"sandbox-{uuid.uuid4().hex[:8]}"
    ident = manifests.SandboxIdentity(
        namespace=name,
        kernel_id="e2e-notebook-03",
        language="python",
        owner="e2e",
        user="e2e",
        created="1970-01-01T00:00:00Z",
    )
    core_v1.create_namespace(manifests.namespace(ident))  # labelled exactly like a sandbox namespace
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "intruder"},
            "spec": {
                "containers": [
                    {
                        "name": "intruder",
                        "image": "localhost/sandbox-python:3.11",
                        "securityContext": {"privileged": True},
                    }
                ]
            },
        }
        with pytest.raises(ApiException) as refused:
            core_v1.create_namespaced_pod(name, pod)
        assert refused.value.status == 403
        message = json.loads(refused.value.body)["message"]
        nb = nbformat.read(NOTEBOOKS / "03-pod-security.ipynb", as_version=4)
        quoted = next(c for c in nb.cells if c["id"] == "privileged-md").source
        quoted_flat = " ".join(quoted.split())
        for part in [
            'pods "intruder" is forbidden: violates PodSecurity "restricted:latest"',
            'privileged (container "intruder" must not set securityContext.privileged=true)',
            'allowPrivilegeEscalation != false (container "intruder" must set securityContext.allowPrivilegeEscalation=false)',
            'unrestricted capabilities (container "intruder" must set securityContext.capabilities.drop=["ALL"])',
            'runAsNonRoot != true (pod or container "intruder" must set securityContext.runAsNonRoot=true)',
            'seccompProfile (pod or container "intruder" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")',
        ]:
            assert part in message, f"the API server no longer says {part!r}: {message}"
            assert part in quoted_flat, f"notebook 03 does not quote {part!r}"
    finally:
        core_v1.delete_namespace(name)


def test_04_sandbox_lifecycle(notebook: Any) -> None:
    ran = notebook("04-sandbox-lifecycle.ipynb")
    status = ran.stdout("status")
    assert "Lease sandbox-heartbeat, renewed every" in status, status
    events = ran.stdout("events")
    for reason in ("Scheduled", "Started"):
        assert reason in events, events
    assert "Kernel:" in events
    crash = ran.error_text("crash")
    assert "exit code 3" in crash and "A new sandbox pod is started" in crash, crash
    first_pod = re.search(r"pod\s+(\S+)", status).group(1)
    later_pod = re.search(r"pod\s+(\S+)", ran.stdout("heartbeat")).group(1)
    assert first_pod != later_pod, "the crash must have replaced the pod"
    assert ran.stdout("after-crash") == f"now running in pod {later_pod}\n"  # a pod's hostname is its name
    assert f"pod/{later_pod}" in ran.stdout("events-after")


def test_05_rbac_and_admission(notebook: Any, core_v1: client.CoreV1Api) -> None:
    ran = notebook("05-rbac-and-admission.ipynb")
    namespace = re.search(r"namespace (sandbox-[0-9a-f]{8})", ran.stdout("backend")).group(1)
    whoami = ran.stdout("whoami")
    assert re.search(rf"^username\s+{SA_USER}$", whoami, re.M), whoami
    assert "system:serviceaccounts:sandbox-kernel-system" in whoami and "system:authenticated" in whoami, whoami

    def rules(cell: str) -> dict[str, tuple[str, str]]:
        rows = ran.stdout(cell).splitlines()[2:]
        return {
            r.split()[0]: (r.split()[1], " ".join(r.split()[2:]))
            for r in rows
            if r and not r.startswith("non-resource")
        }

    own, default = rules("rules"), rules("rules-default")
    assert own["pods"] == ("[]", "[create get delete]"), own
    assert own["pods/log"] == ("[]", "[get]") and own["pods/attach"] == ("[]", "[get create]"), own
    assert own["clusterroles.rbac.authorization.k8s.io"] == ("[sandbox-kernel-sandbox]", "[bind]"), own
    assert own["namespaces"][1].startswith("[create get list delete"), own
    assert "pods/exec" not in own and "secrets" not in own, own
    # In default only the cluster-wide rules: no pods at all.
    assert not {r for r in default if r.startswith("pods")}, default
    assert default["namespaces"] == own["namespaces"], default
    can = dict(line.rsplit(": ", 1) for line in ran.stdout("can-i").splitlines() if not line.startswith("  "))
    assert can == {
        f"create pods in namespace {namespace}": "yes",
        "create pods in namespace default": "no",
        f"create pods/exec in namespace {namespace}": "no",
        f"list secrets in namespace {namespace}": "no",
        "bind clusterroles cluster-admin": "no",
        "bind clusterroles sandbox-kernel-sandbox": "yes",
        "create namespaces": "yes",
        "delete namespaces": "yes",
    }, can
    assert f'RoleBinding "sandbox-kernel/{namespace}" of ClusterRole "sandbox-kernel-sandbox"' in ran.stdout("can-i")
    # What RBAC allows, the admission policies refuse: every one a real answer of the API server.
    policy = "Error from server (Forbidden): {what} is forbidden: ValidatingAdmissionPolicy '{name}' with binding '{name}' denied request: "
    refusals = {
        "delete-platform": (
            policy.format(what='namespaces "sandbox-kernel-system"', name="sandbox-kernel-namespaces")
            + "sandbox-kernel may only delete its sandbox namespaces"
        ),
        "ns-name": (
            policy.format(what='namespaces "team-a"', name="sandbox-kernel-namespaces")
            + "sandbox-kernel may only create namespaces named sandbox-*, not team-a"
        ),
        "ns-unlabelled": (
            policy.format(what='namespaces "sandbox-0000beef"', name="sandbox-kernel-namespaces")
            + "sandbox-kernel may only create namespaces labelled app.kubernetes.io/managed-by=sandbox-kernel"
        ),
        "ns-privileged": (
            policy.format(what='namespaces "sandbox-0000beef"', name="sandbox-kernel-namespaces")
            + "sandbox-kernel may only create sandbox namespaces with Pod Security"
        ),
        "netpol": policy.format(
            what='networkpolicies.networking.k8s.io "allow-all"', name="sandbox-kernel-networkpolicies"
        ),
        "pod": (
            policy.format(what='pods "sleeper"', name="sandbox-kernel-pods-command")
            + "sandbox-kernel may only create pods that run the sandbox agent behind its network policy guard"
        ),
    }
    for cell, text in refusals.items():
        assert text in ran.stdout(cell), (cell, ran.stdout(cell))
    assert "would have enforce=privileged" in ran.stdout("ns-privileged")
    assert "not allow-all" in ran.stdout("netpol")
    assert ran.stdout("delete-default") == (
        'namespace/default: Error from server (Forbidden): namespaces "default" is forbidden: '
        "this namespace may not be deleted\n"
    )
    assert ran.stdout("ns-ok") == "namespace/sandbox-0000beef created (server dry run: admitted, nothing stored)\n"
    escalation = ran.stdout("escalation")
    assert (
        "Error from server (Forbidden)" in escalation
        and "attempting to grant RBAC permissions not currently held" in escalation
    )
    # Dry runs: nothing was created or deleted.
    names = {ns.metadata.name for ns in core_v1.list_namespace().items}
    assert "sandbox-kernel-system" in names and "team-a" not in names and "sandbox-0000beef" not in names


def test_06_troubleshooting_lab(notebook: Any, sandbox_images: dict[str, str]) -> None:
    ran = notebook("06-troubleshooting-lab.ipynb")
    namespace = re.search(r"namespace (sandbox-[0-9a-f]{8})", ran.stdout("backend")).group(1)
    assert [line.split()[0] for line in ran.stdout("lab").splitlines()[1:5]] == list(LAB_SCENARIOS)
    # 1: the LimitRange refuses the pod at admission: no pod, no events.
    assert ran.stdout("over-limits") == (
        'Error from server (Forbidden): pods "lab-over-limits" is forbidden: '
        "maximum memory usage per Container is 256Mi, but limit is 512Mi\n"
    )
    assert ran.stdout("over-limits-describe") == 'Error from server (NotFound): pods "lab-over-limits" not found\n'
    # 2: the quota refuses it: the kernel's own pod already uses 64Mi of 256Mi requests.
    assert ran.stdout("over-quota") == (
        'Error from server (Forbidden): pods "lab-over-quota" is forbidden: exceeded quota: sandbox-quota, '
        "requested: requests.memory=256Mi, used: requests.memory=64Mi, limited: requests.memory=256Mi\n"
    )
    quota = dict((row.split()[0], row.split()[1:]) for row in ran.stdout("over-quota-quota").splitlines()[1:])
    assert quota["requests.memory"] == ["64Mi", "256Mi"] and quota["pods"] == ["1", "3"], quota
    # 3: admitted, but the kubelet cannot pull the image.
    started = ran.stdout("missing-image")
    assert started.startswith("pod/lab-missing-image created\n"), started
    assert re.search(r"^lab-missing-image\s+0/1\s+(ErrImagePull|ImagePullBackOff)\s+0$", started, re.M), started
    described = ran.stdout("missing-image-describe")
    assert re.search(rf"^Namespace:\s+{namespace}$", described, re.M), described
    assert "connection refused" in described, described  # the node asked a registry at localhost: there is none
    assert re.search(r"^Image:\s+localhost/sandbox-python:no-such-tag$", described, re.M), described
    assert re.search(r"^    Reason:\s+(ErrImagePull|ImagePullBackOff)$", described, re.M), described
    assert 'Failed to pull image "localhost/sandbox-python:no-such-tag"' in described, described
    logs = ran.stdout("missing-image-logs")
    assert logs.startswith("Error from server (BadRequest):") and "is waiting to start" in logs, logs
    # 4: the Python command on the Bash image: exit 127, restarted again and again.
    started = ran.stdout("crash-loop")
    assert re.search(r"^lab-crash-loop\s+0/1\s+CrashLoopBackOff\s+[1-9]\d*$", started, re.M), started
    described = ran.stdout("crash-loop-describe")
    assert re.search(r"^Image:\s+localhost/sandbox-bash:5$", described, re.M), described
    assert re.search(r"^Command:\s+/bin/sh -c python3 -c ", described, re.M), described
    assert re.search(r"^Restart Policy:\s+Always$", described, re.M), described
    assert re.search(r"^  Last State:\s+Terminated\n    Reason:\s+Error\n    Exit Code:\s+127$", described, re.M), (
        described
    )
    assert re.search(r"Warning\s+BackOff\s+\d+\s+Back-off restarting failed container", described), described
    assert "python3: not found" in ran.stdout("crash-loop-logs"), ran.stdout("crash-loop-logs")
    # Cleaned up; the kernel's own sandbox was never affected.
    assert ran.stdout("clean") == "deleted pod/lab-missing-image, pod/lab-crash-loop\n"
    assert re.fullmatch(r"this cell ran in sandbox-1 - 42\n", ran.stdout("still-fine")), ran.stdout("still-fine")
    assert all(line.split()[-1] == "-" for line in ran.stdout("lab-after").splitlines()[1:5])
    # The hidden answers say what the cells really showed.
    nb = nbformat.read(NOTEBOOKS / "06-troubleshooting-lab.ipynb", as_version=4)
    answers = {c["id"]: " ".join(c.source.split()) for c in nb.cells if "answer" in c.metadata.get("tags", [])}
    for cell, facts in {
        "over-limits-answer": ["maximum memory usage per Container is 256Mi, but limit is 512Mi", "NotFound"],
        "over-quota-answer": ["exceeded quota: sandbox-quota", "`64Mi`", "`192Mi`"],
        "missing-image-answer": [
            "ErrImagePull",
            "ImagePullBackOff",
            "Failed to pull image",
            "connection refused",
            "is waiting to start",
            "localhost/sandbox-python:3.11",
        ],
        "crash-loop-answer": ["CrashLoopBackOff", "Exit Code: 127", "python3: not found", "restartPolicy: Always"],
    }.items():
        for fact in facts:
            assert fact in answers[cell], (cell, fact)
    assert (
        sandbox_images["SANDBOX_IMAGE_PYTHON"] == "localhost/sandbox-python:3.11"
    )  # the kernel's own, as the answer says

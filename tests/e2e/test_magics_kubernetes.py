"""``%%sandbox`` cells of an ordinary ipykernel ``python3`` kernel on the Kubernetes backend.

The host kernel runs as the service account from k8s/rbac (``kernel_env``); its sandboxes are
namespaces like a Sandbox kernel's, and go away when the host kernel shuts down.
"""

from __future__ import annotations

import uuid

from kubernetes import client

from fixtures_kubernetes import KERNEL_ID_LABEL, wait_until

from kernels import errors, result, run_cell, running_kernel, text


def test_sandbox_cells_run_in_a_locked_down_namespace_that_goes_away_with_the_kernel(
    kernel_env: dict[str, str], core_v1: client.CoreV1Api
) -> None:
    kernel_id = f"magic-{uuid.uuid4().hex[:8]}"
    selector = f"{KERNEL_ID_LABEL}={kernel_id}"

    def namespaces() -> list[str]:
        return [ns.metadata.name for ns in core_v1.list_namespace(label_selector=selector).items]

    with running_kernel("python3", env={**kernel_env, "SANDBOX_KERNEL_ID": kernel_id}) as (km, kc):
        reply, out = run_cell(kc, "%load_ext sandbox_kernel")
        assert reply["status"] == "ok", out
        reply, out = run_cell(
            kc, "%%sandbox\nimport os\nanswer = 6 * 7\nprint(os.getuid(), os.environ.get('KUBERNETES_SERVICE_HOST'))"
        )
        assert reply["status"] == "ok", out
        assert text(out) == "1000 None\n"  # uid 1000, no service discovery variables
        reply, out = run_cell(kc, "%%sandbox\nanswer")
        assert reply["status"] == "ok" and result(out) == "42"
        reply, out = run_cell(kc, "%%sandbox bash\nhead -c 64 /var/run/secrets/kubernetes.io/serviceaccount/token")
        assert reply["status"] == "error"  # no service account token mounted
        assert "No such file or directory" in text(out, "stderr") + str(errors(out))

        python_ns, bash_ns = sorted(
            namespaces(), key=lambda n: core_v1.read_namespace(n).metadata.labels["sandbox-kernel/language"] != "python"
        )
        reply, out = run_cell(kc, "%sandbox status")
        status = text(out)
        assert "[python] kubernetes backend" in status and "[bash] kubernetes backend" in status
        assert python_ns in status and bash_ns in status
        labels = core_v1.read_namespace(python_ns).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert labels["app.kubernetes.io/managed-by"] == "sandbox-kernel"

        reply, out = run_cell(kc, "%sandbox stop bash")
        assert "Stopped the bash sandbox" in text(out)
        wait_until(lambda: bash_ns not in namespaces(), 60, what=f"namespace {bash_ns} to be deleted")
        assert python_ns in namespaces()
    # Shutting the host kernel down closes its sandboxes.
    wait_until(lambda: not namespaces(), 60, what="the sandbox namespaces to be deleted")

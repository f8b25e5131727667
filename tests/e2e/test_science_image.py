"""On Kubernetes the sandbox's environment is its image (issue 9, item 1): a data-science image
(numpy, pandas, matplotlib and IPython; the test cluster builds localhost/sandbox-python-science
from Debian packages like the other images) chosen for one kernelspec with
``sandbox-kernel install --image python=IMAGE``, while the other kernelspecs keep theirs.

The kernel starts from the kernelspec the CLI wrote, through jupyter_client, as JupyterLab does,
and runs a notebook's first steps: read the notebook's CSV, describe it, plot it, time it.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from kubernetes import client

from fixtures_kubernetes import K8sKernel, run_cli, stop_kernel

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def science_image(sandbox_images: dict[str, str]) -> str:
    image = sandbox_images.get("SANDBOX_IMAGE_PYTHON_SCIENCE")
    assert image, "tests/cluster/images builds localhost/sandbox-python-science; images.env does not name it"
    return image


@pytest.fixture
def science_kernel(
    science_image: str, kernel_env: dict[str, str], core_v1: client.CoreV1Api, tmp_path: Path
) -> Iterator[K8sKernel]:
    prefix = tmp_path / "prefix"
    done = run_cli(
        kernel_env, "install", "--prefix", str(prefix), "--backend", "kubernetes", "--image", f"python={science_image}"
    )
    assert done.returncode == 0, done.stderr
    kernels = prefix / "share" / "jupyter" / "kernels"
    spec = json.loads((kernels / "sandbox-python" / "kernel.json").read_text())
    assert f"--KubernetesSandbox.images=python={science_image}" in spec["argv"], spec["argv"]
    assert spec["display_name"].endswith("sandbox-python-science:3.11"), spec["display_name"]
    notebook = tmp_path / "notebook"
    notebook.mkdir()
    (notebook / "data.csv").write_text("x,y\n" + "".join(f"{i},{i * i}\n" for i in range(10)))
    kernel_id = str(uuid.uuid4())
    km = KernelManager(kernel_name="sandbox-python", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    km.shutdown_wait_time = 60.0
    # kernel_env names the plain image in SANDBOX_IMAGE_PYTHON: the kernelspec's setting must win.
    km.start_kernel(env={**os.environ, **kernel_env, "SANDBOX_KERNEL_ID": kernel_id}, cwd=str(notebook))
    kc = km.client()
    kc.start_channels()
    kernel = K8sKernel(km, kc, kernel_id, core_v1)
    try:
        kc.wait_for_ready(timeout=180)
        yield kernel
    finally:
        stop_kernel(kernel)


def test_a_kernelspec_with_the_data_science_image_reads_describes_plots_and_times(
    science_kernel: K8sKernel, science_image: str, core_v1: client.CoreV1Api
) -> None:
    kernel = science_kernel
    cell = kernel.run("import pandas as pd\ndf = pd.read_csv('data.csv')\nprint(df['y'].sum(), df.shape)", timeout=180)
    assert cell.reply["status"] == "ok" and cell.stdout == "285 (10, 2)\n", cell
    pods = core_v1.list_namespaced_pod(kernel.namespace()).items
    assert [c.image for p in pods for c in p.spec.containers] == [science_image]

    cell = kernel.run("df.describe()")  # pandas' rich repr: HTML, sanitized, and text
    results = [o for o in cell.outputs if o["type"] == "execute_result"]
    assert cell.reply["status"] == "ok" and len(results) == 1, cell
    assert "text/html" in results[0]["data"] and "mean" in results[0]["data"]["text/plain"], results[0]["data"].keys()

    cell = kernel.run("import matplotlib.pyplot as plt\nplt.plot(df['x'], df['y'])\nplt.title('squares')\nplt.show()")
    images = [o["data"]["image/png"] for o in cell.outputs if o["type"] == "display_data" and "image/png" in o["data"]]
    assert cell.reply["status"] == "ok" and len(images) == 1, cell
    assert base64.b64decode(images[0]).startswith(PNG_MAGIC)

    cell = kernel.run("%timeit -n 3 -r 1 df['y'].mean()")  # IPython mode: the image has IPython
    assert cell.reply["status"] == "ok" and "per loop" in cell.stdout, cell

"""The attack suite runs on the real test cluster with the e2e suite's fixtures.

tests/e2e/conftest.py (kubeconfig, core_v1, namespace_factory, …) and its Kubernetes fixtures
(sa_kubeconfig, sa_api, k8s_kernel, …) are loaded here under a name of their own, so that the
attacks use exactly the identity the e2e tests use: the least-privilege service account of
k8s/rbac/, minted by tests/cluster/kubeconfig-for, never an admin.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

E2E = Path(__file__).resolve().parents[1] / "e2e"

_spec = importlib.util.spec_from_file_location("sandbox_kernel_e2e_conftest", E2E / "conftest.py")
assert _spec and _spec.loader
_e2e = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _e2e
_spec.loader.exec_module(_e2e)

from sandbox_kernel_e2e_conftest import *  # noqa: E402,F401,F403 - the fixtures

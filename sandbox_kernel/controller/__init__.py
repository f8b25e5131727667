"""The sandbox controller (claims mode): ``sandbox-kernel controller``.

It alone makes sandbox namespaces for SandboxClaims (:mod:`sandbox_kernel.kubernetes.claims`),
keeps a warm pool of ready sandboxes, and deletes a sandbox when its claim goes or the claim's
heartbeat expires. Built on kopf (watching claims: resumable watches, finalizers, retries with
backoff, one handler at a time per claim) behind a coordination.k8s.io Lease (the official
client's leader election), so a second replica waits instead of acting. See k8s/README.md.

    settings.py    SandboxController: bounds, pool sizes, leader election, intervals
    sandboxes.py   making, binding and deleting one sandbox (blocking API calls)
    pool.py        the warm pool: refill, recycle, take one atomically
    handlers.py    kopf handlers: claim created/resumed/deleted, heartbeat timer, sweeps
    leader.py      leader election and the process's main loop
"""

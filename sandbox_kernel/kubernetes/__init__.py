"""The Kubernetes backend: a locked-down namespace and a restricted pod per kernel.

A kernel start, module by module (imports point down this list, never up):

- :mod:`.session` — :class:`~.session.KubernetesSandboxSession`, what the kernel talks to; it
  ties the steps below together and replaces a pod that ended.
- :mod:`.early` — the head start: the namespace and first pod are created while the kernel
  process still imports ipykernel (standard library only at import time).
- :mod:`.settings` — ``c.KubernetesSandbox.*``, validated against the shared ``Sandbox`` limits.
- :mod:`.provision` — creating the namespace and every object in it, in the order that keeps it
  safe, then the pod.
- :mod:`.pod_status` — reading a starting or ended pod's status into a message for the user.
- :mod:`.attach` — the byte stream to the agent (an attach websocket that survives drops).
- :mod:`.reports` — ``%sandbox status | quota | policy | events | manifests``.
- :mod:`.manifests` — the pure builders of every object, with :mod:`.pod_command` — what the
  pod's container runs (the NetworkPolicy guard, the kernel's gate, the agent); :mod:`.api` — the one module that talks
  to the API server and translates its errors; :mod:`.commands` — ``sandbox-kernel render | list | gc``.
"""

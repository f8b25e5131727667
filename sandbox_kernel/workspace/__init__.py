"""The notebook's files in the sandbox: the workspace, and files moved in and out of it.

Jupyter starts a kernel in the notebook's directory. ``Sandbox.workspace`` decides what the
sandbox sees of it (``read-only``, the default; ``read-write``; ``hidden``):

- :mod:`.names` checks every file name that crosses the boundary (pure);
- :mod:`.hostfs` reads and writes the host's side without ever following a symlink or leaving
  the directory (``openat``-style walking, ``O_NOFOLLOW``, write to a new file then rename);
- :mod:`.staging` is the local backend's read-write mode: the sandbox works in a private copy,
  and the kernel writes changed files back after each cell, with the checks of :mod:`.hostfs`;
- :mod:`.transfer` moves files through the agent protocol (``file_write`` / ``file_read``):
  ``%sandbox upload`` / ``%sandbox download`` on both backends, and the copy a Kubernetes
  sandbox gets at start;
- :mod:`.writeback_remote` is the Kubernetes backend's read-write mode: after each cell the agent
  lists the pod's working directory (``file_list``) and the kernel fetches what is new or changed
  through :mod:`.transfer`, written back with the same checks as :mod:`.staging`.
"""

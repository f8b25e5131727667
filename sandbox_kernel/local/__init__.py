"""The local sandbox backend (bubblewrap + cgroups, or gVisor's runsc) on this machine.

A kernel start, module by module (imports point down this list, never up):

- :mod:`.backend` — :class:`~.backend.LocalSandboxSession`, what the kernel talks to: starts the
  sandbox, reads why one ended, adds the local hints to a cell's errors.
- :mod:`.report` — ``%sandbox status | quota | policy | events | manifests``; :mod:`.usage` —
  the sandbox's usage, read from its cgroup.
- :mod:`.isolation` — what isolation this host gives (bubblewrap, user namespaces, cgroups, the
  seccomp filter), refused with what to install unless the user opted out.
- :mod:`.command` — the command that starts the sandbox and what the sandbox sees: the
  interpreter, the read-only paths, the environment, the uid drop and the cgroup join.
- :mod:`.workspace` — the notebook's directory in the sandbox; :mod:`.bwrap` — bubblewrap's
  options for what the sandbox sees; :mod:`.environment` — the user's Python environment and
  node_modules, read-only.
- :mod:`.settings` — ``c.LocalSandbox.*``; :mod:`.gvisor` — gVisor's runsc as the runtime.
- :mod:`.seccomp_policy` — the seccomp table; :mod:`.uids` — a host uid per sandbox;
  :mod:`.cgroups` — memory, CPU and process limits; :mod:`.agent_code` — the agent file the
  sandbox gets.
"""

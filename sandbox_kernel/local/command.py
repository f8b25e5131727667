"""The command line that starts a local sandbox, and what the sandbox sees: a mixin of
:class:`~sandbox_kernel.local.backend.LocalSandboxSession`.

The interpreter, the host paths shown read-only (the user's environment, node_modules,
``read_only_paths``), the agent's environment and the mount plan make the :class:`~.bwrap.View`;
bubblewrap's options come from it (:mod:`.bwrap`), or gVisor's bundle does (:mod:`.gvisor`). The
command is then prefixed with the uid drop and the cgroup join. :meth:`SandboxCommand.command`
is the whole command spelled out, as ``%sandbox manifests`` shows it.
"""

from __future__ import annotations

import os
import shlex
import shutil

from ..config import Limits
from ..egress.host import EgressController
from ..errors import ConfigError, SandboxUnavailable
from ..languages import Language
from . import bwrap, cgroups, environment, gvisor, uids
from .bwrap import AGENT_DIR, SANDBOX_HOME, WORKSPACE, View, WorkspaceMount
from .settings import SANDBOX_PATH, LocalSandbox
from .workspace import LocalWorkspace


class SandboxCommand:
    """What the sandbox sees and the command that starts it (see the module's docstring)."""

    # Provided by LocalSandboxSession:
    language: Language
    limits: Limits
    settings: LocalSandbox
    egress: EgressController | None
    workspace: LocalWorkspace
    _isolated: bool
    _gvisor: bool
    _python: environment.PythonEnvironment
    _node_modules: tuple[str, ...]
    _read_only: list[str]
    _workspace_mount: WorkspaceMount | None
    _lease: uids.UidLease | None
    _bundle: gvisor.GVisorBundle | None
    _seccomp: bool | None

    def _interpreter(self) -> str:
        for item in self.settings.interpreters:
            name, _, path = item.partition("=")
            if name == self.language.name and path:
                return path
        if self.language.name == "python":
            return self._python.python
        found = shutil.which(self.language.interpreter, path=SANDBOX_PATH)
        if not found:
            raise SandboxUnavailable(
                f"{self.language.interpreter} was not found on {SANDBOX_PATH}; install it or set "
                f"c.LocalSandbox.interpreters = ['{self.language.name}=/path/to/{self.language.interpreter}']."
            )
        return found

    def _read_only_paths(self) -> list[str]:
        """Every host path shown read-only at its own place: the environment, the interpreter's
        prefix when LocalSandbox.interpreters names one outside the system, node_modules and
        read_only_paths; each checked against the sandbox's own mounts."""
        paths: list[tuple[str, str]] = [("LocalSandbox.python_environment", m) for m in self._python.mounts]
        for item in self.settings.interpreters:
            name, _, path = item.partition("=")
            if name == self.language.name and path:
                if not os.path.isabs(path):
                    raise ConfigError("LocalSandbox.interpreters", f"{path!r} is not an absolute path")
                paths += [("LocalSandbox.interpreters", m) for m in environment.interpreter_mounts(path)]
        if self.language.name == "node":
            paths += [("LocalSandbox.node_modules", m) for m in self._node_modules]
        paths += [("LocalSandbox.read_only_paths", p) for p in self.settings.read_only_paths]
        for setting, path in paths:
            environment.check_not_hidden(setting, path, bwrap.RESERVED)
        return list(dict.fromkeys(p for _, p in paths))

    @property
    def visible_paths(self) -> list[str]:
        """The host paths this sandbox shows read-only on purpose (for ``%sandbox selftest``)."""
        return list(self._read_only)

    def _sandbox_env(self) -> dict[str, str]:
        """The agent's whole environment."""
        path = SANDBOX_PATH if self._python.bin_dir is None else f"{self._python.bin_dir}:{SANDBOX_PATH}"
        env = {"PATH": path, "HOME": SANDBOX_HOME, "USER": "sandbox", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        if self.language.name == "node" and self._node_modules:
            env["NODE_PATH"] = ":".join(self._node_modules)
        return env

    def _mount_plan(self) -> environment.MountPlan:
        # As root, the sandbox's uid may not reach the paths (a 0700 /root): stage them.
        source = self.workspace.read_only_source
        return environment.MountPlan(
            self._read_only, staged=self._isolated and os.geteuid() == 0, at={WORKSPACE: source} if source else None
        )

    def _view(self, plan: environment.MountPlan, relay_fd: str = "<relay fd>") -> View:
        return View(
            scratch_bytes=self.limits.scratch_bytes,
            env=tuple(self._sandbox_env().items()),
            mounts=plan,
            workspace=self._workspace_mount,
            cwd=self.workspace.cwd,
            agent_name=self.language.agent_path().name,
            extra=tuple(self.egress.bwrap_mounts(relay_fd)) if self.egress is not None else (),
            extra_env=tuple(self.egress.bwrap_env()) if self.egress is not None else (),
        )

    def _host_uid(self) -> int | None:
        """The host uid the sandbox runs as, when the kernel is root (explicit run_as_uid wins)."""
        if os.geteuid() != 0:
            return None
        if self.settings.run_as_uid is not None:
            return self.settings.run_as_uid
        return self._lease.uid if self._lease else None

    def _bwrap_path(self) -> str:
        return shutil.which(self.settings.bwrap) or self.settings.bwrap

    def _inner(self) -> list[str]:
        interpreter = self._interpreter()
        agent = self.language.agent_path()
        if not self._isolated:
            return [interpreter, str(agent)]
        argv = [interpreter, f"{AGENT_DIR}/{agent.name}"]
        if self.egress is not None:  # egress hook: the relay listens, then execs the agent
            argv = self.egress.inner(SANDBOX_PATH, argv)
        return bwrap.reaped(argv)

    def _wrap(self, argv: list[str], cgroup: cgroups.SandboxCgroup | None, plan: environment.MountPlan) -> list[str]:
        """Prefix the bubblewrap command with the uid drop, the cgroup join and, as root, the
        private mount namespace that stages the read-only paths (environment.py)."""
        uid = self._host_uid()
        if uid is not None:
            # Never run user code as root on the host: drop to an unprivileged uid, and let
            # bubblewrap's user namespace make that uid look like 1000 inside.
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"] + argv
        if cgroup is not None:
            # Join the cgroup before anything else runs, so no byte is ever allocated outside it.
            # The paths are in this script, not the environment: bubblewrap gets the environment
            # this process was given (it was the sandbox's readable PID 1 before --as-pid-1).
            procs = " ".join(shlex.quote(f) for f in cgroup.procs_files())
            script = f'for f in {procs}; do echo $$ > "$f" || exit 125; done; '
        else:
            script = ""
        script += plan.script()
        if script:
            argv = [*plan.wrapper(), "/bin/sh", "-c", script + 'exec "$@"', "sandbox-start"] + argv
        return argv

    def command(
        self, cgroup: cgroups.SandboxCgroup | None, fds: dict[str, str] | None = None, seccomp: bool | None = None
    ) -> list[str]:
        """The exact command that starts the sandbox (shown by ``%sandbox manifests``).

        The kernel passes bubblewrap's options through ``--args FD`` (see :meth:`_spawn`), so that
        no host path is on any command line; this is the same command
        with them spelled out. ``fds`` are the descriptor numbers of the copied files."""
        inner = self._inner()
        if not self._isolated:
            return inner
        plan = self._mount_plan()
        if self._gvisor:
            bundle = self._bundle or gvisor.GVisorBundle("<sandbox>")
            return self._wrap(
                bundle.command(self.settings.runsc, self.settings.gvisor_platform, rootless=True), cgroup, plan
            )
        fds = fds or {name: f"<{name} fd>" for name in ("seccomp", "passwd", "group", "agent")}
        argv = [
            self._bwrap_path(),
            *self._bwrap_options(fds, self._seccomp is not False if seccomp is None else seccomp, plan),
            "--",
            *inner,
        ]
        return self._wrap(argv, cgroup, plan)

    def _bwrap_options(self, fds: dict[str, str], seccomp: bool, plan: environment.MountPlan) -> list[str]:
        view = self._view(plan, fds.get("relay", "<relay fd>"))
        return bwrap.options(view, fds, seccomp, bwrap.disables_userns(self._bwrap_path()))

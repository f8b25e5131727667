"""The host side of a local sandbox's egress: its proxy, its policy file and the bwrap options.

One proxy.py process group per sandbox (:mod:`.runner`), listening on a Unix socket in a
directory only the sandbox's host uid (and root) may enter. That directory is bind-mounted
read-only at :data:`SANDBOX_DIR` in the sandbox, whose network namespace still has only
loopback: the relay (:mod:`.relay`, started before the agent) listens on 127.0.0.1:PORT there
and carries each connection to the socket. Nothing of this exists when the allow list is empty
and widening is off: the sandbox is then exactly as without this module.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from traitlets import Bool, Int, List, TraitError, Unicode, validate
from traitlets.config import Configurable

from ..errors import ConfigError, SandboxStartError
from . import policy

SANDBOX_DIR = "/run/sandbox-egress"
RELAY_PATH = "/opt/sandbox-agent/egress-relay.py"
START_TIMEOUT = 15.0
_numbers = itertools.count(1)


class EgressProxy(Configurable):
    """Settings of the egress proxy (the allow list itself is Sandbox.allow_hosts)."""

    allow_widening = Bool(
        False,
        help="Let '%sandbox allow' add hosts that Sandbox.allow_hosts does not cover. Off (the "
        "default), a notebook can only narrow the operator's list. On, the proxy runs even for an "
        "empty list (refusing everything until a host is allowed).",
    ).tag(config=True)

    port = Int(
        3128, help="Port of the proxy relay on the sandbox's own loopback (HTTP_PROXY=http://127.0.0.1:PORT)."
    ).tag(config=True)

    hosts_file = Unicode(
        "",
        help="TESTS ONLY: a hosts(5) file that is the proxy's whole resolver (names not in it do "
        "not resolve). Empty (the default): the system resolver.",
    ).tag(config=True)

    exempt_networks = List(
        Unicode(),
        help="TESTS ONLY: networks (CIDR) the proxy may connect to although they are private or "
        "loopback, e.g. the test servers' 127.0.0.2/32. Empty (the default): none.",
    ).tag(config=True)

    state_dir = Unicode(
        "",
        help="Where the per-sandbox sockets, policies and logs live (default "
        "/run/sandbox-kernel/egress as root, else a directory under the temp dir).",
    ).tag(config=True)

    @validate("exempt_networks")
    def _check_networks(self, proposal: Any) -> list[str]:
        for item in proposal["value"]:
            try:
                ipaddress.ip_network(item)
            except ValueError as exc:
                raise TraitError(f"EgressProxy.exempt_networks: {exc}") from None
        return cast("list[str]", proposal["value"])

    def base_dir(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir)
        if os.geteuid() == 0:
            return Path("/run/sandbox-kernel/egress")
        return Path(tempfile.gettempdir()) / f"sandbox-kernel-egress-{os.getuid()}"


def proxy_env(port: int) -> list[tuple[str, str]]:
    """The variables that point clients at the relay (curl, urllib, requests, pip, npm, node)."""
    url = f"http://127.0.0.1:{port}"
    no_proxy = "localhost,127.0.0.1,::1"
    return [
        ("HTTP_PROXY", url),
        ("HTTPS_PROXY", url),
        ("http_proxy", url),
        ("https_proxy", url),
        ("NO_PROXY", no_proxy),
        ("no_proxy", no_proxy),
        ("PIP_PROXY", url),
        ("npm_config_proxy", url),
        ("npm_config_https_proxy", url),
        ("NODE_USE_ENV_PROXY", "1"),  # Node.js 22.21+/24: fetch and https honour HTTP(S)_PROXY
    ]


def _accepts(path: Path) -> bool:
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def sweep_stale(base: Path) -> None:
    """Remove what sandboxes of kernels that died without cleaning up left (their proxies ended
    with them: the runner's watchdog)."""
    for path in base.iterdir():
        m = re.match(r"\.?local-(\d+)-\d+", path.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # that kernel still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def controller_for(allow_hosts: tuple[str, ...], local_settings: Configurable) -> EgressController | None:
    """The local backend's hook: a controller when the sandbox has egress, else None."""
    try:
        settings = EgressProxy(config=local_settings.config)
    except TraitError as exc:  # a ConfigError is shown in the cell; a TraitError would kill the kernel
        raise ConfigError("EgressProxy", str(exc)) from None
    if not allow_hosts and not settings.allow_widening:
        return None
    return EgressController(allow_hosts, settings)


class EgressController:
    """One sandbox's allow list and, while the sandbox runs, its proxy."""

    def __init__(self, operator_hosts: tuple[str, ...] | list[str], settings: EgressProxy | None = None) -> None:
        self.settings = settings or EgressProxy()
        self.running = policy.RunningList.from_operator(operator_hosts, self.settings.allow_widening)
        self.sandbox_id = f"local-{os.getpid()}-{next(_numbers)}"
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.running.operator) or self.settings.allow_widening

    # -- files ------------------------------------------------------------------------------------

    def _write_policy(self) -> None:
        assert self.dir is not None and self._log_path is not None
        data: dict[str, Any] = {
            "sandbox": self.sandbox_id,
            **self.running.as_json(),
            "hosts_file": self.settings.hosts_file or None,
            "exempt_networks": list(self.settings.exempt_networks),
            "log": str(self._log_path),
        }
        tmp = self.dir.parent / f".{self.dir.name}.policy.tmp"
        tmp.write_text(json.dumps(data))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self._policy_path)

    @property
    def _policy_path(self) -> Path:
        assert self.dir is not None
        return self.dir.parent / f"{self.dir.name}.policy.json"

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self, sandbox_uid: int | None) -> None:
        """Start this sandbox's proxy; return once its socket accepts connections."""
        await asyncio.get_running_loop().run_in_executor(None, self._start, sandbox_uid)

    def _start(self, sandbox_uid: int | None) -> None:
        base = self.settings.base_dir()
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(base, 0o711)
        sweep_stale(base)
        self.sandbox_id = f"local-{os.getpid()}-{next(_numbers)}"
        self.dir = base / self.sandbox_id
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(mode=0o700)
        self._log_path = base / f"{self.sandbox_id}.log"
        if self.settings.hosts_file and not os.access(self.settings.hosts_file, os.R_OK):
            raise SandboxStartError(f"EgressProxy.hosts_file {self.settings.hosts_file!r} cannot be read")
        self._write_policy()
        sock = self.dir / "proxy.sock"
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "PYTHONPATH", "HOME", "TMPDIR")}
        env["SANDBOX_EGRESS_POLICY"] = str(self._policy_path)
        env["SANDBOX_EGRESS_PARENT"] = str(os.getpid())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox_kernel.egress.runner", str(sock)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd="/",
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(sock):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                err = b""
                if self._proc.poll() is not None and self._proc.stderr:
                    err = self._proc.stderr.read()[-800:]
                self.stop()
                raise SandboxStartError(
                    f"The egress proxy did not start: {err.decode(errors='replace').strip() or 'timeout'}"
                )
            time.sleep(0.02)
        if sandbox_uid is not None and os.geteuid() == 0:
            os.chown(self.dir, sandbox_uid, sandbox_uid)
            os.chown(sock, sandbox_uid, sandbox_uid)
        os.chmod(sock, 0o600)
        os.chmod(self.dir, 0o700)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + 5  # proxy.py's acceptor and worker processes too
            while time.monotonic() < deadline:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.02)
            if proc.stderr:
                proc.stderr.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            for path in (self._policy_path, self._log_path):
                if path is not None:
                    path.unlink(missing_ok=True)

    # -- the sandbox's command line ---------------------------------------------------------------

    def bwrap_mounts(self, relay_fd: str) -> list[str]:
        """The socket's directory (read-only) and the relay, before bwrap's ``--remount-ro /``."""
        where = str(self.dir) if self.dir is not None else "<egress socket dir>"
        return ["--ro-bind", where, SANDBOX_DIR, "--perms", "0444", "--file", relay_fd, RELAY_PATH]

    def bwrap_env(self) -> list[str]:
        """The proxy variables, after bwrap's ``--clearenv``."""
        argv: list[str] = []
        for name, value in proxy_env(self.settings.port):
            argv += ["--setenv", name, value]
        return argv

    def inner(self, sandbox_path: str, argv: list[str]) -> list[str]:
        """``argv`` started by the relay, once it listens (it forks itself off, then execs argv)."""
        python = shutil.which("python3", path=sandbox_path) or "/usr/bin/python3"
        return [python, "-I", RELAY_PATH, f"{SANDBOX_DIR}/proxy.sock", str(self.settings.port), "--", *argv]

    @staticmethod
    def relay_source() -> bytes:
        return (Path(__file__).parent / "relay.py").read_bytes()

    # -- %sandbox allow / deny / network ----------------------------------------------------------

    def allow(self, hosts: list[str]) -> str:
        lines = [self.running.allow_host(h) for h in hosts]
        self._publish()
        return "\n".join(lines)

    def deny(self, hosts: list[str]) -> str:
        lines = [self.running.deny_host(h) for h in hosts]
        self._publish()
        return "\n".join(lines)

    def _publish(self) -> None:
        if self.dir is not None and self.dir.exists():
            self._write_policy()

    def log_lines(self) -> list[dict[str, Any]]:
        if self._log_path is None or not self._log_path.exists():
            return []
        with open(self._log_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 64 * 1024))
            tail = f.read().decode("utf-8", "replace").splitlines()
        out = []
        for line in tail:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def policy_line(self) -> str:
        """The line ``%sandbox policy`` adds for a sandbox with egress."""
        allowed = ", ".join(map(str, self.running.allow)) or "nothing yet"
        return (
            f"egress: only HTTP(S) through the proxy at 127.0.0.1:{self.settings.port} (proxy.py on the host, "
            f"via a Unix socket) to: {allowed}; IP addresses, private/loopback/link-local/metadata addresses "
            "and TLS names other than the CONNECT host refused (%sandbox network); environment also "
            "HTTP(S)_PROXY, NO_PROXY, PIP_PROXY, npm_config_(https_)proxy, NODE_USE_ENV_PROXY"
        )

    def report(self) -> str:
        if not self.enabled:
            return "network: none (Sandbox.allow_hosts is empty: the sandbox has loopback only)"
        r = self.running
        lines = [
            f"egress: through the proxy (proxy.py) at 127.0.0.1:{self.settings.port} in the sandbox, sandbox id {self.sandbox_id}",
            "allowed: " + (", ".join(map(str, r.allow)) or "(nothing)"),
        ]
        if r.deny:
            lines.append("denied: " + ", ".join(map(str, r.deny)))
        lines.append(
            "operator's list (Sandbox.allow_hosts): "
            + (", ".join(map(str, r.operator)) or "(empty)")
            + ("; widening allowed" if r.widening else "; %sandbox allow can only narrow it")
        )
        refused = [e for e in self.log_lines() if e.get("decision") == "refused"][-10:]
        if refused:
            lines.append("last refused:")
            for e in refused:
                when = time.strftime("%H:%M:%S", time.localtime(e.get("time", 0)))
                lines.append(f"  {when}  {e.get('host')}:{e.get('port')}  {e.get('reason')}")
        return "\n".join(lines)


def magic(session: Any, topic: str, hosts: list[str]) -> str:
    """``%sandbox allow|deny|network`` for the kernel (backends without egress say so)."""
    from ..errors import ConfigError

    egress = getattr(session, "egress", None)  # the local and the Kubernetes backends have one with an allow list
    if egress is None:
        if topic == "network":
            return "network: none (Sandbox.allow_hosts is empty: the sandbox reaches nothing)"
        raise ConfigError(
            "Sandbox.allow_hosts",
            "the sandbox was started without egress (the list is empty); the operator sets Sandbox.allow_hosts",
        )
    if topic == "network":
        return cast("str", egress.report())
    if not hosts:
        raise ConfigError("%sandbox", f"usage: %sandbox {topic} HOST [HOST…]")
    if not egress.enabled:
        raise ConfigError(
            "Sandbox.allow_hosts",
            "the sandbox was started without egress (the list is empty); the operator sets "
            "Sandbox.allow_hosts, or EgressProxy.allow_widening = True",
        )
    try:
        return cast("str", egress.allow(hosts) if topic == "allow" else egress.deny(hosts))
    except policy.PolicyError as exc:
        raise ConfigError("%sandbox " + topic, str(exc)) from None

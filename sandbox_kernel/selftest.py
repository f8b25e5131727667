"""``%sandbox selftest``: the project's isolation checks, run from inside the user's own sandbox.

An operator verifies a deployment the way the test suite does: a small probe runs in the
sandbox (in its language: Python probes system calls with ctypes; Node.js and Bash read /proc
through ``/bin/sh``), prints one ``SANDBOX-SELFTEST {json}`` line of raw observations, and
:func:`evaluate` turns them into a pass/fail table here, in the kernel, where the sandbox
cannot forge the verdict (it could only forge its observations — which is why a failing check
matters and a passing one is evidence, not proof).

The probe only looks at the sandbox itself and, for the network, tries the addresses a
sandbox could reach in its own deployment (its default gateway, the Kubernetes API service);
it contacts nothing else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MARK = "SANDBOX-SELFTEST "

# What each check means; the order is the table's.
CHECKS: dict[str, str] = {
    "non-root user": "the sandbox runs as an unprivileged uid",
    "no capabilities": "effective capability set is empty",
    "no new privileges": "setuid programs cannot raise privileges (no_new_privs)",
    "seccomp filter": "a seccomp filter is in force",
    "no user namespaces": "unshare(CLONE_NEWUSER) is refused",
    "no keyring": "keyctl() is refused (no access to any kernel keyring)",
    "no io_uring": "io_uring_setup() is refused",
    "no userfaultfd": "userfaultfd() is refused",
    "no bpf": "bpf() is refused",
    "read-only system": "writing to / and /usr fails",
    "writable home": "HOME is writable scratch space",
    "no host home": "/root of the host is not visible",
    "no service account token": "no Kubernetes credentials are mounted",
    "no secrets in environment": "no variable named like a token, secret, password or kubeconfig",
    "network isolated": "nothing outside the sandbox answers (gateway, API server; IPv4 and IPv6)",
    "memory limit": "a memory limit is in force, at most the configured one",
    "process limit": "a process limit is in force",
    "runtime": "the kernel the sandbox talks to (gVisor's own, or the host's)",
}

PYTHON_PROBE = r"""
def __sandbox_selftest():
    import ctypes, errno, json, os, socket, struct
    obs = {"language": "python"}
    libc = ctypes.CDLL(None, use_errno=True)
    def call(nr, *args):
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
        return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    # x86_64 numbers (aarch64 in brackets is not needed on this project's machines)
    # unshare(CLONE_NEWUSER) in a single-threaded child: a threaded process gets EINVAL anyway.
    pid = os.fork()
    if pid == 0:
        r = call(272, 0x10000000)
        os._exit(0 if r == "ok" else getattr(errno, r, 255))
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    obs["unshare_userns"] = "ok" if code == 0 else errno.errorcode.get(code, str(code))
    obs["keyctl"] = call(250, 0, -3, 0)          # KEYCTL_GET_KEYRING_ID of the session keyring
    obs["io_uring_setup"] = call(425, 1, 0)       # a NULL params pointer: EFAULT if allowed
    obs["userfaultfd"] = call(323, 0)
    obs["bpf"] = call(321, 0, 0, 0)               # EFAULT/EINVAL if allowed
    obs["nnp_prctl"] = str(libc.prctl(39, 0, 0, 0, 0))  # PR_GET_NO_NEW_PRIVS (gVisor's /proc lacks NoNewPrivs)
    return obs
"""

SHELL_PROBE = r"""
# Shell builtins only: sandbox images may have /bin/sh and nothing else (no sed, awk, ls, cat).
uid= capeff= nnp= seccomp=
while read -r key value rest; do
  case $key in
    Uid:) uid=$value ;; CapEff:) capeff=$value ;; NoNewPrivs:) nnp=$value ;; Seccomp:) seccomp=$value ;;
  esac
done < /proc/self/status
try_write() { if ( : > "$1" ) 2>/dev/null; then rm -f "$1" 2>/dev/null || : ; echo ok; else echo refused; fi; }
first_line() { line=; [ -r "$1" ] && read -r line < "$1"; printf '%s' "$line"; }
host_home=
for f in /root/* /root/.[!.]*; do [ -e "$f" ] && host_home="$host_home${f#/root/} "; done
[ -n "$host_home" ] || host_home=hidden
sa_token=absent
[ -e /var/run/secrets/kubernetes.io/serviceaccount/token ] && sa_token=present
secret_env=
for name in $(export -p | while read -r _ assignment; do assignment=${assignment#-x }; printf '%s\n' "${assignment%%=*}"; done); do
  case $name in *[Tt][Oo][Kk][Ee][Nn]*|*[Ss][Ee][Cc][Rr][Ee][Tt]*|*[Pp][Aa][Ss][Ss][Ww]*|*[Kk][Uu][Bb][Ee][Cc][Oo][Nn][Ff][Ii][Gg]*|*[Cc][Rr][Ee][Dd][Ee][Nn][Tt][Ii][Aa][Ll]*) secret_env="$secret_env$name " ;; esac
done
interfaces=
for i in /sys/class/net/*; do [ -e "$i" ] && interfaces="$interfaces${i##*/} "; done
ipv6=
if [ -r /proc/net/if_inet6 ]; then
  while read -r addr _ _ _ _ dev; do [ "$dev" = lo ] || ipv6="$ipv6$addr "; done < /proc/net/if_inet6
fi
gateway=
if [ -r /proc/net/route ]; then
  while read -r dev dest gw rest; do [ "$dest" = 00000000 ] && gateway=$gw && break; done < /proc/net/route
fi
mem=$(first_line /sys/fs/cgroup/memory.max); [ -n "$mem" ] || mem=$(first_line /sys/fs/cgroup/memory/memory.limit_in_bytes)
pids=$(first_line /sys/fs/cgroup/pids.max); [ -n "$pids" ] || pids=$(first_line /sys/fs/cgroup/pids/pids.max)
version=$(first_line /proc/version)
printf '{"uid": "%s", "capeff": "%s", "nnp": "%s", "seccomp": "%s", "write_root": "%s", "write_usr": "%s", "write_home": "%s", "host_home": "%s", "sa_token": "%s", "secret_env": "%s", "interfaces": "%s", "ipv6": "%s", "gateway": "%s", "api_host": "%s", "memory_max": "%s", "pids_max": "%s", "version": "%s"}\n' \
  "$uid" "$capeff" "$nnp" "$seccomp" "$(try_write /.sandbox-selftest)" "$(try_write /usr/.sandbox-selftest)" \
  "$(try_write "${HOME:-/nonexistent}/.sandbox-selftest")" "$host_home" "$sa_token" "$secret_env" "$interfaces" \
  "$ipv6" "$gateway" "${KUBERNETES_SERVICE_HOST:-}" "$mem" "$pids" "${version%%(*}"
"""


def program(language: str) -> str:
    """The probe for a sandbox of ``language``: prints one :data:`MARK` line, leaves nothing behind
    (Python runs it in a namespace of its own, Bash in a subshell, Node.js in a function)."""
    shell = json.dumps(SHELL_PROBE)
    if language == "python":
        source = json.dumps(PYTHON_PROBE + "\n" + _PYTHON_MAIN)
        return f"exec(compile({source}, '<selftest>', 'exec'), {{'__name__': '__selftest__', 'SHELL': {shell}}})"
    if language == "node":
        return (
            "(() => { const out = require('child_process').execFileSync('/bin/sh', ['-c', " + shell + "], "
            "{ encoding: 'utf8', timeout: 20000 }); console.log("
            + json.dumps(MARK)
            + " + out.trim()); })();\nundefined"
        )
    if language == "bash":
        return f"( printf '%s' {_sh_quote(MARK)}; /bin/sh -c {_sh_quote(SHELL_PROBE)} )"
    raise ValueError(f"no selftest for {language!r}")


_PYTHON_MAIN = r"""
import json as _json, socket as _socket, subprocess as _subprocess
_obs = __sandbox_selftest()  # noqa
_obs.update(_json.loads(_subprocess.run(["/bin/sh", "-c", SHELL], capture_output=True, text=True, timeout=20).stdout))
def _try(host, port, family):
    s = _socket.socket(family, _socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        return "open" if s.connect_ex((host, port) if family == _socket.AF_INET else (host, port, 0, 0)) == 0 else "refused"
    except OSError as e:
        return "refused"
    finally:
        s.close()
_probes = {}
_gw = _obs.get("gateway") or ""
if len(_gw) == 8:
    import struct as _struct
    _ip = _socket.inet_ntoa(_struct.pack("<I", int(_gw, 16)))
    for _port in (53, 443, 6443, 10250):
        _probes["%s:%d" % (_ip, _port)] = _try(_ip, _port, _socket.AF_INET)
if _obs.get("api_host"):
    _probes[_obs["api_host"] + ":443"] = _try(_obs["api_host"], 443, _socket.AF_INET)
_obs["probes"] = _probes
print("SANDBOX-SELFTEST " + _json.dumps(_obs))
"""


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def observations(output: str) -> dict[str, Any] | None:
    """The probe's observations from a cell's stdout, or None if there are none."""
    for line in reversed(output.splitlines()):
        if line.startswith(MARK):
            try:
                found = json.loads(line[len(MARK) :])
            except ValueError:
                return None
            return found if isinstance(found, dict) else None
    return None


@dataclass(frozen=True)
class Row:
    check: str
    verdict: str  # "pass", "FAIL" or "n/a"
    detail: str


def _home_row(seen: str, visible_paths: tuple[str, ...]) -> Row:
    """/root must be hidden, or hold nothing but the way to the read-only paths the backend
    shows there on purpose (``visible_paths``: a pyenv or venv environment under /root)."""
    if seen.strip() == "hidden":
        return Row("no host home", "pass", "/root: hidden")
    names = seen.split()
    expected = {p.split("/")[2] for p in visible_paths if p.startswith("/root/") and len(p.split("/")) > 2}
    extra = [n for n in names if n not in expected] if seen.strip() != "visible" else ["visible"]
    if not extra:
        return Row(
            "no host home",
            "pass",
            f"/root: only the way to {', '.join(p for p in visible_paths if p.startswith('/root/'))} (read-only)",
        )
    return Row("no host home", "FAIL", f"/root: {' '.join(extra)} visible")


GVISOR_VERSION = "4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"  # what gVisor's kernel says it is

# What gVisor's own kernel gives a sandbox where the host's would be at risk: calls that work
# there without a seccomp profile in force inside gVisor (Kubernetes: runsc without --oci-seccomp).
GVISOR_OWN = {"unshare_userns": "a user namespace of gVisor's kernel", "keyctl": "a keyring of gVisor's kernel"}


def _syscall_row(obs: dict[str, Any], key: str, name: str, language: str, gvisor: bool = False) -> Row:
    value = obs.get(key)
    if value is None:
        return Row(name, "n/a", f"not probed from {language} (a Python sandbox probes system calls)")
    if gvisor and value == "ok" and key in GVISOR_OWN:
        return Row(name, "n/a", f"{key}: ok, {GVISOR_OWN[key]}: the host's is never reached")
    return Row(name, "pass" if value in ("EPERM", "EACCES", "ENOSYS") else "FAIL", f"{key}: {value}")


def evaluate(
    obs: dict[str, Any], memory_bytes: int, backend: str, language: str, visible_paths: tuple[str, ...] = ()
) -> list[Row]:
    """The verdicts for one sandbox's observations (pure).

    Under gVisor a cell's system calls never reach the host's kernel: a seccomp profile not in
    force inside gVisor, a user namespace or keyring made there, and a cgroup that shows no memory
    limit (it is enforced on gVisor from outside) are "n/a" with the reason, not failures.
    """
    rows: list[Row] = []
    gvisor = GVISOR_VERSION in str(obs.get("version", ""))
    uid = str(obs.get("uid", ""))
    rows.append(Row("non-root user", "pass" if uid.isdigit() and uid != "0" else "FAIL", f"uid {uid or '?'}"))
    cap = str(obs.get("capeff", ""))
    rows.append(Row("no capabilities", "pass" if cap and int(cap, 16) == 0 else "FAIL", f"CapEff {cap or '?'}"))
    nnp = obs.get("nnp") or obs.get("nnp_prctl")
    if not nnp and gvisor:
        rows.append(
            Row(
                "no new privileges", "n/a", "gVisor's /proc does not show NoNewPrivs (not probed from " + language + ")"
            )
        )
    else:
        rows.append(Row("no new privileges", "pass" if nnp == "1" else "FAIL", f"NoNewPrivs {nnp or '?'}"))
    if gvisor and obs.get("seccomp") == "0":
        rows.append(
            Row(
                "seccomp filter",
                "n/a",
                "Seccomp mode 0: no profile in force inside gVisor, whose own kernel serves every call",
            )
        )
    else:
        rows.append(
            Row(
                "seccomp filter",
                "pass" if obs.get("seccomp") == "2" else "FAIL",
                f"Seccomp mode {obs.get('seccomp') or '?'}",
            )
        )
    rows.append(_syscall_row(obs, "unshare_userns", "no user namespaces", language, gvisor))
    rows.append(_syscall_row(obs, "keyctl", "no keyring", language, gvisor))
    rows.append(_syscall_row(obs, "io_uring_setup", "no io_uring", language))
    rows.append(_syscall_row(obs, "userfaultfd", "no userfaultfd", language))
    rows.append(_syscall_row(obs, "bpf", "no bpf", language))
    ro = obs.get("write_root") == "refused" and obs.get("write_usr") == "refused"
    rows.append(
        Row("read-only system", "pass" if ro else "FAIL", f"/: {obs.get('write_root')}, /usr: {obs.get('write_usr')}")
    )
    rows.append(
        Row("writable home", "pass" if obs.get("write_home") == "ok" else "FAIL", f"HOME: {obs.get('write_home')}")
    )
    rows.append(_home_row(str(obs.get("host_home", "")), visible_paths))
    rows.append(
        Row("no service account token", "pass" if obs.get("sa_token") == "absent" else "FAIL", str(obs.get("sa_token")))
    )
    secret_env = str(obs.get("secret_env", "")).strip()
    rows.append(Row("no secrets in environment", "FAIL" if secret_env else "pass", secret_env or "none"))
    interfaces = [i for i in str(obs.get("interfaces", "")).split() if i != "lo"]
    found_probes = obs.get("probes")
    probes: dict[str, Any] = found_probes if isinstance(found_probes, dict) else {}
    open_ = [target for target, state in probes.items() if state == "open"]
    ipv6 = str(obs.get("ipv6", "")).split()
    if open_:
        rows.append(Row("network isolated", "FAIL", "answered: " + ", ".join(open_)))
    elif not interfaces:
        rows.append(Row("network isolated", "pass", "loopback only"))
    elif probes:
        detail = f"{', '.join(interfaces)}; refused: {', '.join(probes)}"
        if ipv6:
            detail += f"; IPv6 addresses present ({len(ipv6)})"
        rows.append(Row("network isolated", "pass", detail))
    else:
        rows.append(Row("network isolated", "n/a", f"interfaces {', '.join(interfaces)}; not probed from {language}"))
    mem = str(obs.get("memory_max", "")).strip()
    if mem.isdigit() and int(mem) < 2**60:
        rows.append(
            Row(
                "memory limit",
                "pass" if int(mem) <= memory_bytes else "FAIL",
                f"{int(mem) // 2**20} MiB (configured {memory_bytes // 2**20} MiB)",
            )
        )
    elif (mem in ("max",) or (mem.isdigit() and int(mem) >= 2**60)) and gvisor and backend == "kubernetes":
        rows.append(
            Row(
                "memory limit",
                "n/a",
                "gVisor's cgroup shows no limit: the pod's is enforced on gVisor from outside (see %sandbox quota)",
            )
        )
    elif mem in ("max",) or (mem.isdigit() and int(mem) >= 2**60):
        rows.append(Row("memory limit", "FAIL", "no limit in the sandbox's cgroup"))
    else:
        rows.append(Row("memory limit", "n/a", "cgroup not visible inside (enforced from outside; see %sandbox quota)"))
    pids = str(obs.get("pids_max", "")).strip()
    if pids.isdigit():
        rows.append(Row("process limit", "pass", f"{pids} processes"))
    elif pids == "max":
        rows.append(
            Row("process limit", "FAIL" if backend == "local" else "n/a", "pids.max is 'max' in the sandbox's cgroup")
        )
    else:
        rows.append(
            Row("process limit", "n/a", "cgroup not visible inside (enforced from outside; see %sandbox quota)")
        )
    version = str(obs.get("version", ""))
    rows.append(
        Row("runtime", "pass", "gVisor (its own kernel)" if gvisor else "host kernel: " + " ".join(version.split()[:3]))
    )
    return rows


def format_table(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    lines += [f"{r.check:<{width}}  {r.verdict:<6}  {r.detail}" for r in rows]
    failed = sum(r.verdict == "FAIL" for r in rows)
    lines.append(f"{len(rows) - failed} of {len(rows)} checks passed or not applicable; {failed} failed")
    return "\n".join(lines) + "\n"


def parse_table(text: str) -> dict[str, str]:
    """``{check: verdict}`` from a table :func:`format_table` printed (for scripts and tests)."""
    verdicts: dict[str, str] = {}
    for line in text.splitlines():
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) >= 2 and parts[0] in CHECKS:
            verdicts[parts[0]] = parts[1]
    return verdicts

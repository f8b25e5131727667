"""What the sandbox pod's container runs: the policy guard, then the kernel's gate, then the agent.

:func:`agent_command` is the container's command line (pure). The guard, a few lines in the
image's own interpreter (:data:`POLICY_GUARDS`), checks that the deny-all NetworkPolicy is in
force for this very pod before anything else runs; the gate makes the agent wait until the
kernel is attached (:data:`GATE_LINE`). The admission policy ``sandbox-kernel-pods-command``
admits exactly the commands :func:`agent_command_pattern` matches.
"""

from __future__ import annotations

import re
import shlex

AGENT_DIR = "/opt/sandbox-agent"
"""Where the agent's ConfigMap is mounted (read-only)."""
SANDBOX_HOME = "/home/sandbox"
"""HOME and working directory of the user's code: the scratch emptyDir."""
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
"""PATH of the user's code; the only other variables it gets are HOME and LANG."""

GATE_LINE = b"go\n"
"""What the kernel writes to the pod's stdin once attached: it lets the agent start (see :func:`agent_command`)."""

_GATE_VALUE = re.compile(r"[A-Za-z0-9_.,:/@%=-]+")
_GATE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def gate_line(variables: list[tuple[str, str]] | tuple[tuple[str, str], ...] = ()) -> bytes:
    """The gate line; with ``variables`` (the egress proxy's, :mod:`.egress`) it also hands them to
    the agent's environment: the shell reads them as the rest of the line into ``$egress``, and
    passes that, split into words, to ``env -i``. Only over the attach stream: they carry the
    sandbox's proxy credential, which is thus in no API object (not the pod's spec, no Secret).
    Names and values are checked here to be plain words (no space, quote or glob character)."""
    words = []
    for name, value in variables:
        if not _GATE_NAME.fullmatch(name) or not _GATE_VALUE.fullmatch(value):
            raise ValueError(f"not a plain variable for the gate line: {name}")
        words.append(f"{name}={value}")
    return b" ".join([b"go", *(w.encode() for w in words)]) + b"\n"


NAMESPACES_REFUSED = 96
"""Exit status of the stream relay (``KubernetesSandbox.stream_relay``) when the runtime does not let
it make the agent's namespaces (agents/relay.py)."""

POLICY_NOT_ENFORCED = 97
"""Exit status of the container when the deny-all NetworkPolicy is not in force (see :data:`POLICY_GUARDS`)."""

IPV6_PORTS = (6443, 10250)
"""The node's ports the policy guard must find closed at the node's IPv6 link-local address: the API
server's service port and the kubelet's (see :data:`POLICY_GUARDS`)."""

# Run before the agent, with the image's interpreter: wait until the API server (the one address
# every pod can reach when no policy applies) is unreachable, i.e. the deny-all NetworkPolicy is
# programmed for this pod. Network plugins program a new pod's rules a moment after it starts
# (kube-router: ~0.4 s), and no cell may run in that gap. Gives up with exit status 97 after
# WAIT seconds: a cluster that does not enforce NetworkPolicy never runs cells.
#
# IPv6 too: many plugins (kube-router among them) filter IPv4 only, while every interface has an
# fe80:: link-local address and the node's API server and kubelet listen on [::]. So if the pod
# has any IPv6 address besides loopback (/proc/net/if_inet6), the guard also requires that the
# node does not answer on IPV6_PORTS (the API server's service port, 6443, the kubelet's 10250)
# at its link-local address: the IPv4 default gateway's MAC from /proc/net/arp, turned into its
# EUI-64 fe80:: address, and any IPv6 default route's next hop (/proc/net/ipv6_route). A pod
# without IPv6 (the test cluster's CNI turns it off) pays one file read for this.
POLICY_GUARDS: dict[str, list[str]] = {
    "python3": [
        "python3",
        "-c",
        (
            "import os,select,socket,sys,time\n"
            "h=os.environ.get('KUBERNETES_SERVICE_HOST');p=int(os.environ.get('KUBERNETES_SERVICE_PORT') or 443)\n"
            "def rd(f):\n"
            " try:return [l.split() for l in open(f).read().splitlines()]\n"
            " except OSError:return []\n"
            "def v6():\n"
            " if not [x for x in rd('/proc/net/if_inet6') if x[-1]!='lo']:return False\n"
            " t={(socket.inet_ntop(socket.AF_INET6,bytes.fromhex(x[4])),x[9]) for x in rd('/proc/net/ipv6_route') if x[0]=='0'*32 and x[4]!='0'*32}\n"
            " g=[socket.inet_ntoa(bytes.fromhex(x[2])[::-1]) for x in rd('/proc/net/route')[1:] if x[1]=='00000000']\n"
            " for x in rd('/proc/net/arp')[1:]:\n"
            "  if x[0] in g and x[3]!='00:00:00:00:00:00':\n"
            "   b=bytes.fromhex(x[3].replace(':',''));b=bytes([b[0]^2])+b[1:3]+bytes([255,254])+b[3:]\n"
            "   t.add(('fe80::'+':'.join(b[i:i+2].hex() for i in range(0,8,2)),x[5]))\n"
            " w={}\n"
            " for a,d in t:\n"
            "  for q in {p,PORTS}:\n"
            "   s=socket.socket(socket.AF_INET6);s.setblocking(False)\n"
            "   try:s.connect_ex((a,q,0,socket.if_nametoindex(d)));w[s]=1\n"
            "   except OSError:s.close()\n"
            " o=False;e=time.time()+0.5\n"
            " while w and not o and time.time()<e:\n"
            "  r=select.select([],list(w),[],max(0,e-time.time()))[1]\n"
            "  if not r:break\n"
            "  for s in r:o=o or s.getsockopt(socket.SOL_SOCKET,socket.SO_ERROR)==0;w.pop(s);s.close()\n"
            " [s.close() for s in w]\n"
            " return o\n"
            "end=time.time()+WAIT\n"
            "while h and time.time()<end:\n"
            " s=socket.socket();s.settimeout(1)\n"
            " try:s.connect((h,p));o=True\n"
            " except OSError:o=v6()\n"
            " finally:s.close()\n"
            " if not o:sys.exit(0)\n"
            " time.sleep(0.05)\n"
            "sys.exit(97)"
        ),
    ],
    "node": [
        "node",
        "-e",
        (
            "const net=require('net'),fs=require('fs');const h=process.env.KUBERNETES_SERVICE_HOST,p=+(process.env.KUBERNETES_SERVICE_PORT||443);"
            "const end=Date.now()+WAIT*1000;"
            "const rd=f=>{try{return fs.readFileSync(f,'utf8').trim().split('\\n').map(l=>l.trim().split(/\\s+/))}catch(e){return []}};"
            "function targets(){if(!rd('/proc/net/if_inet6').some(x=>x.length>5&&x[5]!=='lo'))return [];const t=[];"
            "for(const x of rd('/proc/net/ipv6_route'))if(x[0]==='0'.repeat(32)&&x[4]!=='0'.repeat(32))t.push([x[4].match(/..../g).join(':'),x[9]]);"
            "const g=rd('/proc/net/route').slice(1).filter(x=>x[1]==='00000000').map(x=>x[2].match(/../g).reverse().map(b=>parseInt(b,16)).join('.'));"
            "for(const x of rd('/proc/net/arp').slice(1))if(g.includes(x[0])&&x[3]!=='00:00:00:00:00:00'){"
            "const b=x[3].split(':').map(v=>parseInt(v,16));b[0]^=2;const w=[...b.slice(0,3),255,254,...b.slice(3)];"
            "t.push(['fe80::'+[0,2,4,6].map(i=>((w[i]<<8)|w[i+1]).toString(16)).join(':'),x[5]])}"
            "const r=[];for(const [a,d] of t)for(const q of new Set([p,PORTS]))r.push([a+'%'+d,q]);return r}"
            "function open(host,port,done){const s=net.connect({host,port,timeout:host.includes(':')?500:1000});let f=false;"
            "const fin=o=>{if(!f){f=true;s.destroy();done(o)}};s.on('connect',()=>fin(true));s.on('error',()=>fin(false));s.on('timeout',()=>fin(false))}"
            "function v6(done){const r=targets();let n=r.length,o=false;if(!n)return done(false);"
            "for(const [a,q] of r)open(a,q,x=>{o=o||x;if(--n===0)done(o)})}"
            "(function t(){if(!h||Date.now()>end)process.exit(97);"
            "open(h,p,o=>{if(o)return setTimeout(t,50);v6(x=>x?setTimeout(t,50):process.exit(0))})})()"
        ),
    ],
    "bash": [
        "bash",
        "-c",
        (
            "h=$KUBERNETES_SERVICE_HOST p=${KUBERNETES_SERVICE_PORT:-443} end=$((SECONDS+WAIT)); "
            '[ -n "$h" ] || exit 97; '
            "v6() { local x a d g q t=; "
            'while read -r a _ _ _ _ d; do [ "$d" != lo ] && t=1; done </proc/net/if_inet6; [ -n "$t" ] || return 1; t=; '
            'while read -r x _ _ _ a _ _ _ _ d; do [ "$x" = 00000000000000000000000000000000 ] && '
            '[ "$a" != 00000000000000000000000000000000 ] && '
            't="$t ${a:0:4}:${a:4:4}:${a:8:4}:${a:12:4}:${a:16:4}:${a:20:4}:${a:24:4}:${a:28:4}%$d"; done </proc/net/ipv6_route; '
            'while read -r d x g _; do [ "$x" = 00000000 ] && '
            "g=$((16#${g:6:2})).$((16#${g:4:2})).$((16#${g:2:2})).$((16#${g:0:2})) && break; g=; done </proc/net/route; "
            'while read -r a _ _ x _ d; do [ -n "$g" ] && [ "$a" = "$g" ] && [ "$x" != 00:00:00:00:00:00 ] && '
            'IFS=: read -r m1 m2 m3 m4 m5 m6 <<<"$x" && t="$t $(printf "fe80::%x:%x:%x:%x" $(((16#$m1^2)<<8|16#$m2)) '
            '$((16#$m3<<8|255)) $((254<<8|16#$m4)) $((16#$m5<<8|16#$m6)))%$d"; done </proc/net/arp; '
            "x=; for a in $t; do for q in $p PORTS; do "
            '{ timeout 0.5 bash -c "exec 3<>/dev/tcp/$a/$q"; } & x="$x $!"; done; done; '
            "for q in $x; do wait $q && return 0; done; return 1; } 2>/dev/null; "
            "while [ $SECONDS -lt $end ]; do "
            'timeout 1 bash -c "exec 3<>/dev/tcp/$h/$p" 2>/dev/null || { v6 || exit 0; }; sleep 0.05; done; exit 97'
        ),
    ],
}


def agent_command(
    interpreter: str, agent_file: str, policy_wait: int = 10, shell_as_init: bool = False, egress: bool = False
) -> list[str]:
    """The container command: wait for the network policy and the kernel's gate line, then run the agent.

    First the policy guard (:data:`POLICY_GUARDS`, skipped when ``policy_wait`` is 0) makes
    sure the deny-all NetworkPolicy is in force. It runs before the gate, as soon as the
    container starts, so that its ~50 ms (an interpreter start and a refused connection) overlap
    the kernel noticing the pod runs and attaching, instead of following the gate; nothing of the
    user's runs before both are done. An attach stream only carries what is written after it is
    opened, so the agent must not start (and send its ``ready`` frame) before the kernel is
    attached: it waits for the gate line. ``read`` in ``/bin/sh`` consumes stdin one byte at a
    time, so nothing after the gate line is swallowed (the guard does not read stdin).
    ``env -i`` drops every variable the image and the kubelet set (``KUBERNETES_SERVICE_HOST``
    and the like), leaving the user's code only HOME, PATH and LANG — and, with ``egress`` (a
    sandbox with an allow list), the proxy variables the gate line carried (:func:`gate_line`).

    The agent replaces the shell (``exec``) and is PID 1, which inherits every orphaned process
    of the user's code. With ``shell_as_init`` the shell stays PID 1 instead and reaps them
    while it waits for the agent, having closed its own ends of the attach stream: a cell must
    not find the stream in a process it may open (``/proc/1/fd``; the shell is dumpable).
    """
    # $egress unquoted: the words of the gate line after "go" (checked by gate_line), split.
    run = " ".join(
        [
            shlex.join(["env", "-i", f"HOME={SANDBOX_HOME}", f"PATH={SANDBOX_PATH}", "LANG=C.UTF-8"]),
            *(["$egress"] if egress else []),
            shlex.join([interpreter, f"{AGENT_DIR}/{agent_file}"]),
        ]
    )
    gate = "read -r _ egress" if egress else "read -r _"
    guard = ""
    if policy_wait > 0 and interpreter in POLICY_GUARDS:
        program, flag, code = POLICY_GUARDS[interpreter]
        code = code.replace("WAIT", str(int(policy_wait))).replace("$p PORTS", "$p " + " ".join(map(str, IPV6_PORTS)))
        code = code.replace("PORTS", ",".join(map(str, IPV6_PORTS)))
        guard = shlex.join([program, flag, code]) + " && "
    if shell_as_init:
        # The agent in the background with the stream as its stdin (through fd 3: an asynchronous
        # command's own stdin would be /dev/null) and stdout; the shell then lets go of its own
        # copies, so PID 1, which is dumpable, holds no end of the stream, and waits (reaping).
        agent = f"{run} <&3 3<&- & exec </dev/null >/dev/null 3<&-; wait $!"
        return ["/bin/sh", "-c", f"{guard}{gate} && exec 3<&0 && {{ {agent}; }}; exit $?"]
    return ["/bin/sh", "-c", f"{guard}{gate} && exec {run}"]


_RE2_SPECIAL = set("\\.+*?()|[]{}^$")


def _re2_escape(text: str) -> str:
    return "".join("\\n" if c == "\n" else "\\" + c if c in _RE2_SPECIAL else c for c in text)


def agent_command_pattern() -> str:
    """An RE2 expression matching exactly the commands :func:`agent_command` builds (policy guard on).

    The admission policy ``sandbox-kernel-pods-command`` (k8s/rbac/admission-policy.yaml) admits
    a pod of the service account only if its one container runs ``/bin/sh -c <this>``: a policy
    guard first, then the gate, then an agent from the mounted ConfigMap, and nothing else (no
    ``;`` or ``||`` after the guard), so no code of the pod's creator runs before the guard has
    seen the deny-all policy in force. Any policy wait of 1-9999 s and any agent file name match.
    It is one of the guards followed by one of the gate-and-agent tails (not every pair spelled
    out: the API server's CEL cost limit allows a pattern of about that size); which guard runs
    first does not matter, as long as one does (a guard whose interpreter the image lacks fails,
    and ``&&`` then runs nothing). tests/unit/test_manifests.py checks that the policy carries
    this very expression.
    """
    wait, agent = "7654321", "AGENTFILE"
    guards: list[str] = []
    tails: list[str] = []
    for interpreter in POLICY_GUARDS:
        for shell_as_init, egress in ((False, False), (True, False), (False, True), (True, True)):
            command = agent_command(interpreter, agent, int(wait), shell_as_init, egress)[2]
            guard, sep, tail = command.partition(" && read -r _")
            assert sep and guard.count(wait) == 1 and tail.count(agent) == 1 and wait not in tail
            escaped_guard = _re2_escape(guard).replace(wait, "[1-9][0-9]{0,3}")
            escaped_tail = _re2_escape(sep + tail).replace(agent, "[a-z_]+\\.(?:py|js|sh)")
            guards += [escaped_guard] if escaped_guard not in guards else []
            tails += [escaped_tail] if escaped_tail not in tails else []
    return "^(?:" + "|".join(guards) + ")(?:" + "|".join(tails) + ")$"

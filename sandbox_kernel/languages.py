"""The three sandbox languages: their kernelspecs, agents and how each runtime is started."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class Language:
    """One language a sandbox can run."""

    name: str
    """The setting value and the language label: ``python``, ``node`` or ``bash``."""
    kernelspec: str
    display_name: str
    agent_file: str
    interpreter: str
    """Program that runs the agent file inside the sandbox (looked up on the sandbox PATH)."""
    default_image: str
    """Official image used by the Kubernetes backend unless configured otherwise."""
    agent_reaps_orphans: bool = True
    """Whether the agent, as PID 1 of a container, waits for the orphaned processes of user code
    (the Python and Bash agents do; Node.js cannot wait for a process it did not start, so its pod
    keeps ``/bin/sh`` as PID 1 to reap them: see :func:`.kubernetes.pod_command.agent_command`)."""
    relay_file: str = ""
    """The stream relay for this language's image (``KubernetesSandbox.stream_relay``), run as the
    pod's PID 1 in place of the agent; empty: the language has none (the Bash image has no
    interpreter that can make a socket pair)."""
    mimetype: str = ""
    file_extension: str = ""
    """These two as the agent's ``ready`` says them: the kernel's language_info until it has."""

    def agent_path(self) -> Path:
        """Where the agent source lives in this installation."""
        return Path(str(resources.files("sandbox_kernel.agents").joinpath(self.agent_file)))

    def agent_source(self) -> str:
        return self.agent_path().read_text(encoding="utf-8")

    def relay_source(self) -> str:
        """The stream relay's source (empty when the language has none)."""
        if not self.relay_file:
            return ""
        return resources.files("sandbox_kernel.agents").joinpath(self.relay_file).read_text(encoding="utf-8")


LANGUAGES: dict[str, Language] = {
    "python": Language(
        name="python",
        kernelspec="sandbox-python",
        display_name="Sandbox (Python)",
        agent_file="python_agent.py",
        interpreter="python3",
        default_image="python:3.12-slim-bookworm",
        relay_file="relay.py",
        mimetype="text/x-python",
        file_extension=".py",
    ),
    "node": Language(
        name="node",
        kernelspec="sandbox-node",
        display_name="Sandbox (Node.js)",
        agent_file="node_agent.js",
        interpreter="node",
        default_image="node:22-bookworm-slim",
        agent_reaps_orphans=False,
        relay_file="relay.js",
        mimetype="application/javascript",
        file_extension=".js",
    ),
    "bash": Language(
        name="bash",
        kernelspec="sandbox-bash",
        display_name="Sandbox (Bash)",
        agent_file="bash_agent.sh",
        interpreter="bash",
        default_image="bash:5.2",
        mimetype="text/x-sh",
        file_extension=".sh",
    ),
}


def get_language(name: str, setting: str = "SandboxKernel.language") -> Language:
    """Return the language called ``name`` or raise a :class:`ConfigError` naming ``setting``."""
    aliases = {"javascript": "node", "js": "node", "nodejs": "node", "sh": "bash", "python3": "python"}
    key = aliases.get(name, name)
    try:
        return LANGUAGES[key]
    except KeyError:
        raise ConfigError(setting, f"unknown language {name!r}; choose one of {', '.join(LANGUAGES)}") from None

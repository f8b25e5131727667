"""What a slow sandbox start is waiting for, in words (pod_status.waiting_for), from pod and event
dicts as the API server returns them (shapes copied from `kubectl get -o json` on the test cluster)."""

from __future__ import annotations

from typing import Any

from sandbox_kernel.kubernetes.pod_status import waiting_for


def pod(status: dict[str, Any], node: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": "sandbox-1", "namespace": "sandbox-0123abcd"},
        "spec": {"nodeName": node} if node else {},
        "status": status,
    }


def event(reason: str, when: str, message: str = "", name: str = "sandbox-1") -> dict[str, Any]:
    return {
        "reason": reason,
        "message": message,
        "lastTimestamp": when,
        "involvedObject": {"kind": "Pod", "name": name, "namespace": "sandbox-0123abcd"},
    }


CREATING = {
    "phase": "Pending",
    "containerStatuses": [{"name": "agent", "state": {"waiting": {"reason": "ContainerCreating"}}}],
}


def test_before_the_pod_exists_and_before_it_is_scheduled() -> None:
    assert waiting_for(None) == "creating the sandbox pod"
    assert waiting_for(pod({"phase": "Pending"})) == "waiting for the scheduler to choose a node"


def test_unschedulable_gives_the_schedulers_own_reason() -> None:
    text = waiting_for(
        pod(
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
                    }
                ],
            }
        )
    )
    assert text == (
        "no node can run the sandbox pod yet (0/1 nodes are available: 1 node(s) didn't match "
        "Pod's node affinity/selector.)"
    )


def test_an_image_pull_under_way_is_named_until_the_kubelet_says_pulled() -> None:
    events = [
        event("Scheduled", "2026-12-02T15:00:00Z"),
        event("Pulling", "2026-12-02T15:00:01Z", 'Pulling image "big:1"'),
    ]
    assert waiting_for(pod(CREATING, "node-1"), events, "big:1") == "pulling the image big:1 on node node-1"
    done = [*events, event("Pulled", "2026-12-02T15:00:09Z", 'Successfully pulled image "big:1" in 8s')]
    assert waiting_for(pod(CREATING, "node-1"), done, "big:1") == "starting the container on node node-1"


def test_events_of_other_pods_do_not_count() -> None:
    events = [event("Pulling", "2026-12-02T15:00:01Z", name="sandbox-2")]
    assert waiting_for(pod(CREATING, "node-1"), events, "big:1") == "starting the container on node node-1"


def test_a_failing_mount_is_said_with_the_kubelets_message() -> None:
    events = [event("FailedMount", "2026-12-02T15:00:01Z", 'configmap "sandbox-agent" not found')]
    assert waiting_for(pod(CREATING, "node-1"), events) == (
        'waiting for its volumes on node node-1 (configmap "sandbox-agent" not found)'
    )


def test_other_waiting_reasons_and_a_running_container() -> None:
    backoff = {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "agent", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}
        ],
    }
    assert waiting_for(pod(backoff, "n")) == "the container is waiting (ImagePullBackOff: Back-off pulling image)"
    running = {
        "phase": "Running",
        "containerStatuses": [{"name": "agent", "state": {"running": {"startedAt": "2026-12-02T15:00:02Z"}}}],
    }
    assert "NetworkPolicy" in waiting_for(pod(running, "n"))


def test_long_messages_are_cut() -> None:
    text = waiting_for(
        pod(
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "x" * 5000}
                ],
            }
        )
    )
    assert len(text) < 400


# ---------------------------------------------------------------------------------------------
# The line a waiting cell shows (start_progress.show_while_starting), on a real event loop.


def run_start(duration: float, texts: list[str], monkeypatch: Any) -> list[tuple[str, dict[str, Any]]]:
    import asyncio
    import time

    from sandbox_kernel import start_progress

    monkeypatch.setattr(start_progress, "PROGRESS_AFTER", 0.1)
    monkeypatch.setattr(start_progress, "PROGRESS_INTERVAL", 0.02)
    published: list[tuple[str, dict[str, Any]]] = []

    async def main() -> None:
        began = time.monotonic()
        starting = asyncio.ensure_future(asyncio.sleep(duration))
        said = iter(texts)
        current = {"text": next(said)}

        async def change() -> None:
            for text in said:
                await asyncio.sleep(duration / (len(texts) + 1))
                current["text"] = text

        changer = asyncio.ensure_future(change())
        await start_progress.show_while_starting(
            starting, began, lambda: current["text"], lambda kind, content: published.append((kind, content))
        )
        changer.cancel()

    asyncio.run(main())
    return published


def test_a_quick_start_shows_nothing(monkeypatch: Any) -> None:
    assert run_start(0.05, ["creating the sandbox pod"], monkeypatch) == []


def test_a_slow_start_is_shown_updated_in_place_and_cleared(monkeypatch: Any) -> None:
    published = run_start(
        1.2, ["waiting for the scheduler to choose a node", "pulling the image x on node n"], monkeypatch
    )
    kinds = [kind for kind, _ in published]
    assert kinds[0] == "display_data" and kinds[-1] == "clear_output" and kinds.count("clear_output") == 1
    assert set(kinds[1:-1]) <= {"update_display_data"}
    ids = {content["transient"]["display_id"] for kind, content in published if kind != "clear_output"}
    assert len(ids) == 1
    texts = [content["data"]["text/plain"] for kind, content in published if kind != "clear_output"]
    assert all(t.startswith("Starting the sandbox (") for t in texts)
    assert "waiting for the scheduler" in texts[0] and any("pulling the image x" in t for t in texts)
    assert published[-1][1] == {"wait": False}

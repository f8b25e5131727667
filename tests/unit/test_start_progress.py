"""What a slow sandbox start is waiting for, in words (pod_status.waiting_for), from pod and event
dicts as the API server returns them (shapes copied from `kubectl get -o json` on the test cluster)."""

from __future__ import annotations

from typing import Any

from sandbox_kernel.kubernetes.pod_status import waiting_for


def pod(status: dict[str, Any], node: str = "") -> dict[str, Any]:
    return {"metadata": {"name": "sandbox-1", "namespace": "sandbox-0123abcd"},
            "spec": {"nodeName": node} if node else {}, "status": status}


def event(reason: str, when: str, message: str = "", name: str = "sandbox-1") -> dict[str, Any]:
    return {"reason": reason, "message": message, "lastTimestamp": when,
            "involvedObject": {"kind": "Pod", "name": name, "namespace": "sandbox-0123abcd"}}


CREATING = {"phase": "Pending", "containerStatuses": [
    {"name": "agent", "state": {"waiting": {"reason": "ContainerCreating"}}}]}


def test_before_the_pod_exists_and_before_it_is_scheduled() -> None:
    assert waiting_for(None) == "creating the sandbox pod"
    assert waiting_for(pod({"phase": "Pending"})) == "waiting for the scheduler to choose a node"


def test_unschedulable_gives_the_schedulers_own_reason() -> None:
    text = waiting_for(pod({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]}))
    assert text == ("no node can run the sandbox pod yet (0/1 nodes are available: 1 node(s) didn't match "
                    "Pod's node affinity/selector.)")


def test_an_image_pull_under_way_is_named_until_the_kubelet_says_pulled() -> None:
    events = [event("Scheduled", "2026-12-02T15:00:00Z"), event("Pulling", "2026-12-02T15:00:01Z", 'Pulling image "big:1"')]
    assert waiting_for(pod(CREATING, "node-1"), events, "big:1") == "pulling the image big:1 on node node-1"
    done = [*events, event("Pulled", "2026-12-02T15:00:09Z", 'Successfully pulled image "big:1" in 8s')]
    assert waiting_for(pod(CREATING, "node-1"), done, "big:1") == "starting the container on node node-1"


def test_events_of_other_pods_do_not_count() -> None:
    events = [event("Pulling", "2026-12-02T15:00:01Z", name="sandbox-2")]
    assert waiting_for(pod(CREATING, "node-1"), events, "big:1") == "starting the container on node node-1"


def test_a_failing_mount_is_said_with_the_kubelets_message() -> None:
    events = [event("FailedMount", "2026-12-02T15:00:01Z", 'configmap "sandbox-agent" not found')]
    assert waiting_for(pod(CREATING, "node-1"), events) == (
        'waiting for its volumes on node node-1 (configmap "sandbox-agent" not found)')


def test_other_waiting_reasons_and_a_running_container() -> None:
    backoff = {"phase": "Pending", "containerStatuses": [
        {"name": "agent", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}
    assert waiting_for(pod(backoff, "n")) == "the container is waiting (ImagePullBackOff: Back-off pulling image)"
    running = {"phase": "Running", "containerStatuses": [{"name": "agent", "state": {"running": {"startedAt": "2026-12-02T15:00:02Z"}}}]}
    assert "NetworkPolicy" in waiting_for(pod(running, "n"))


def test_long_messages_are_cut() -> None:
    text = waiting_for(pod({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "x" * 5000}]}))
    assert len(text) < 400

"""``%sandbox TOPIC``: the report topics are defined once (session.ReportTopic) and every
backend answers each of them; the kernel lists them with its own topics."""

from __future__ import annotations

import pytest

from sandbox_kernel import kernel_magics
from sandbox_kernel.kubernetes import reports
from sandbox_kernel.session import REPORT_TOPICS, ReportTopic
from sandbox_kernel.sessions import make_session


def test_the_topics_are_the_enum_values_in_order() -> None:
    assert REPORT_TOPICS == ("status", "quota", "policy", "events", "manifests")
    assert REPORT_TOPICS == tuple(topic.value for topic in ReportTopic)


def test_the_kernel_lists_every_report_topic_and_its_own_once() -> None:
    assert set(REPORT_TOPICS) <= set(kernel_magics.SANDBOX_TOPICS)
    assert not set(REPORT_TOPICS) & set(kernel_magics.KERNEL_TOPICS)
    assert len(set(kernel_magics.SANDBOX_TOPICS)) == len(kernel_magics.SANDBOX_TOPICS)


def test_the_kubernetes_backend_has_a_report_for_every_topic() -> None:
    assert reports.TOPICS == REPORT_TOPICS
    assert set(reports._REPORTS) == set(REPORT_TOPICS)


def test_the_local_backend_answers_every_topic_before_it_starts() -> None:
    session = make_session("local", "python")
    for topic in REPORT_TOPICS:
        assert session.report(topic).strip(), topic
    with pytest.raises(ValueError):
        session.report("nope")

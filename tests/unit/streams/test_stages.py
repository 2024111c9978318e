"""The worker's stage children: one scrape for all processes, and a child that stops with its worker."""

from __future__ import annotations

import asyncio
import socket

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stripemeter.streams import stages


def child_scrape() -> str:
    registry = CollectorRegistry()
    Counter("stripemeter_intake_messages_total", "Messages", registry=registry).inc(7)
    Counter("stripemeter_events_total", "Events", ["outcome"], registry=registry).labels("rejected").inc(2)
    Gauge("stripemeter_child_only", "Only the child has it", registry=registry).set(1)
    Histogram("stripemeter_sink_batch_seconds", "Batches", registry=registry).observe(0.2)
    Info("python", "Python", registry=registry).info({"version": "3"})
    return generate_latest(registry).decode()


def test_children_metrics_join_the_workers_scrape_with_a_stage_label() -> None:
    text = stages.merged_exposition({"intake": child_scrape(), "sink": child_scrape()}).decode()

    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), "a family appears twice: Prometheus would reject the scrape"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    assert samples["stripemeter_intake_messages_total", (("stage", "intake"),)] == 7
    assert samples["stripemeter_events_total", (("outcome", "rejected"), ("stage", "sink"))] == 2
    assert samples["stripemeter_child_only", (("stage", "sink"),)] == 1
    assert samples["stripemeter_sink_batch_seconds_count", (("stage", "intake"),)] == 1
    # the worker's own series keep their labels, next to each child's
    assert ("stripemeter_intake_messages_total", ()) in samples
    assert ("python_info", (("stage", "intake"), ("version", "3"))) in samples
    assert sum(1 for name, labels in samples if name == "python_info" and not dict(labels).get("stage")) == 1


class StageThatWaits:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        await self.stopping.wait()

    def stop(self) -> None:
        self.stopping.set()


async def test_a_child_answers_metrics_requests_and_stops_when_its_worker_is_gone() -> None:
    ours, theirs = socket.socketpair()
    stage = StageThatWaits()
    running = asyncio.create_task(stages.run_stage(stage, theirs.detach()))
    reader, writer = await asyncio.open_connection(sock=ours)

    for request in (1, 2):
        writer.write(request.to_bytes(4, "big"))
        header = await asyncio.wait_for(reader.readexactly(12), 5)
        body = await reader.readexactly(int.from_bytes(header[4:], "big"))
        assert int.from_bytes(header[:4], "big") == request
        assert b"stripemeter_intake_messages_total" in body
    assert not running.done()

    writer.close()  # what the kernel does when the worker dies, even by kill -9
    await asyncio.wait_for(running, 5)
    assert stage.stopping.is_set()

"""The worker: one Faust app composed from the pieces in streams/worker/.

Data path:
  usage.events --intake--> {app}-events-keyed --meter (Faust agent)--> dedupe/counters/watermarks tables
      --checkpoint--> usage.deltas, usage.late, {app}-ledger --sink--> PostgreSQL
"""

from __future__ import annotations

import asyncio

import faust

from stripemeter.adapters.host import install_host_gauges
from stripemeter.domain.config import Settings
from stripemeter.domain.policy import MetricPolicy, Policies
from stripemeter.schemas.topics import TopicNames
from stripemeter.streams.worker.children import install_supervisors, stage_children
from stripemeter.streams.worker.clean_stop import install_clean_stop
from stripemeter.streams.worker.faust_app import faust_app, keyed_topic, table_states
from stripemeter.streams.worker.gauges import install_memory_gauges, install_recovery_watchdog
from stripemeter.streams.worker.health import Health
from stripemeter.streams.worker.in_process import InProcessStages
from stripemeter.streams.worker.meter import Meter
from stripemeter.streams.worker.rebalance import install_rebalance_hooks
from stripemeter.streams.worker.upkeep import PolicyLoader, install_heartbeat, install_policy_refresh


def create_app(
    settings: Settings, with_sink: bool = True, with_intake: bool = True, stage_processes: bool = False
) -> faust.App:
    """The worker; ``with_sink=False`` leaves PostgreSQL to a separate ``stripemeter sink``, and
    ``with_intake=False`` leaves usage.events to a separate ``stripemeter intake``. Intake and the sink
    run inside the worker, or with ``stage_processes=True`` as its child processes (see ``stages.py``).

    Faust starts the app's timers and tasks in the order they are installed here.
    """
    names = TopicNames(settings.topic_prefix, settings.app_id)
    app = faust_app(settings)
    keyed = keyed_topic(app, settings, names)
    states = table_states(app, settings)
    loader = PolicyLoader(settings, Policies(MetricPolicy(lateness_ms=settings.lateness_seconds * 1000)))

    meter = Meter(settings, names, states, loader)
    meter.install(app, keyed)  # agent, checkpoint and dedupe sweep timers
    install_memory_gauges(app, states)
    install_host_gauges(settings.state_dir)  # memory against the container's limit, disk left
    install_recovery_watchdog(app)
    install_rebalance_hooks(app, meter, states, names.keyed)
    meter.install_producer(app)  # the meter and its checkpoints wait for this task

    stopping = asyncio.Event()  # a stop ends the child stages, the reconciler's schedule and the heartbeat
    here = [stage for stage, on in (("intake", with_intake), ("sink", with_sink)) if on]  # not elsewhere
    stages = InProcessStages(settings, with_intake and not stage_processes, with_sink and not stage_processes)
    children = stage_children(settings, here if stage_processes else [])
    install_supervisors(app, children, stopping)
    stages.install(app, meter, stopping)

    health = Health(app, children, names.keyed)
    install_heartbeat(app, settings, health.status, stopping)
    install_policy_refresh(app, loader)
    install_clean_stop(app, stopping, stages, children, meter)
    health.install(app)
    return app

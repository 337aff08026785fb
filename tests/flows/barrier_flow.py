"""A pipeline flow that only runs once another run of its deployment runs alongside it.

Test support for tests/flows/test_deployments.py, loaded by a Prefect worker from the
entrypoint `tests/flows/barrier_flow.py:paired_pipeline_flow` (the deployment's pull
step sets the working directory to the checkout root). It takes the parameters a tune
flow passes to a pipeline deployment, waits (bounded) until the Prefect API shows
another flow run of the same deployment that started and had not ended when this one
started, then runs `flows.pipeline.pipeline_flow` as a subflow with those parameters.
So two trials of a study dispatched with `parallel=2` must really overlap as flow runs
on the work pool, whatever their start-up and training times are; if they cannot (a
worker or pool that runs one flow run at a time) each fails with a clear message
instead of the study finishing serially.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.context import FlowRunContext

from flows.pipeline import pipeline_flow


class NoConcurrentRun(RuntimeError):
    """No other run of the deployment ran alongside this one in time."""


def wait_for_a_concurrent_run(timeout_s: float, poll_s: float = 0.5) -> str:
    """Block until another run of this flow run's deployment overlaps it; its name.

    Overlap: the other run has a start time, and no end time or one after this run's
    start. Once seen, it stays true (this run has not ended yet), so two runs waiting
    for each other both get through, whichever finishes first.
    """
    ctx = FlowRunContext.get()
    me = ctx.flow_run if ctx else None
    if me is None or me.deployment_id is None:
        raise RuntimeError("wait_for_a_concurrent_run needs a flow run of a deployment")
    deployments = DeploymentFilter(id=DeploymentFilterId(any_=[me.deployment_id]))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            started = client.read_flow_run(me.id).start_time
            others = [r for r in client.read_flow_runs(deployment_filter=deployments)
                      if r.id != me.id]
            for r in others:
                if (started is not None and r.start_time is not None
                        and (r.end_time is None or r.end_time > started)):
                    return r.name
            if time.monotonic() > deadline:
                seen = {r.name: r.state.name if r.state else "no state" for r in others}
                raise NoConcurrentRun(
                    f"flow run {me.name!r} waited {timeout_s:.0f} s for another run of its "
                    f"deployment to run at the same time, but none did (other runs and "
                    f"their states: {seen or 'none'}): the work pool ran these flow runs "
                    "one at a time, not in parallel")
            time.sleep(poll_s)


@flow(name="memotune-pipeline-paired", log_prints=True)
def paired_pipeline_flow(config: dict[str, Any], store_url: str, progress: bool = True,
                         lock_dir: str | None = None, summary_doc: str | None = None,
                         locks: str | None = None,
                         wait_for_peer_s: float = 120.0) -> dict[str, Any]:
    """`pipeline_flow` with the same parameters, once another run of this deployment
    runs at the same time (at most `wait_for_peer_s` seconds of waiting: more than the
    Prefect client's back-off, 2+4+8+16+32 s, when a busy SQLite API answers 503 to the
    other trial's create_flow_run, plus that run's start-up)."""
    peer = wait_for_a_concurrent_run(wait_for_peer_s)
    get_run_logger().info("running alongside flow run %r of the same deployment", peer)
    return pipeline_flow(config, store_url, progress=progress, lock_dir=lock_dir,
                         summary_doc=summary_doc, locks=locks)

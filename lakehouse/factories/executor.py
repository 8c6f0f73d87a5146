"""Independent steps of a run side by side, in threads of the run's one process (one Spark session).

Dagster's in-process executor runs one step after the other; its multiprocess executor starts a process,
hence a Spark JVM, per step. A run of this project is mostly small Spark jobs and Delta commits whose
driver waits on the JVM, so steps that do not depend on each other (the sources' landing → formatted →
trusted chains, the views of different sources) can share the session and keep both cores busy.

The executor is the in-process one with a different loop: Dagster's own ``ActiveExecution`` decides which
steps may start (dependencies, retries, skips after a failure); up to ``max_concurrent`` of them run at
once, each in a thread that streams its events back to the run's thread, which records them in order of
arrival. Log capture stays one per process, as in the in-process executor.

Among the steps ready at once, the one with the most work ahead of it starts first (after Dagster's
``dagster/priority`` tag): the sum of the weights (data upstream) along the heaviest path from the step to
the end of the run. The largest source's chain is the longest, and starting it early keeps the small
chains for the other worker instead of leaving it to run alone at the end; among the small chains, the
one with more steps before the last view goes first (critical path first).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import dagster as dg
from dagster._core.definitions.executor_definition import get_retries_config
from dagster._core.events import EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.compute_logs import create_compute_log_file_key
from dagster._core.execution.context.system import PlanExecutionContext, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import _trigger_hook, dagster_event_sequence_for_step
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.step import ExecutionStep
from dagster._core.execution.retries import RetryMode

#: Dagster's tag for the order of ready steps (higher first), as its own executors read it
PRIORITY_TAG = "dagster/priority"
#: how much data an asset is computed from (any unit; larger starts first among ready steps)
Weigh = Callable[[dg.AssetKey], float]

#: a step's thread reports (step key, event or None when the step is done, the exception that ended it)
_Report = tuple[str, dg.DagsterEvent | None, BaseException | None]


def _run_step(step_context: Any, reports: queue.Queue[_Report]) -> None:
    error: BaseException | None = None
    try:
        for event in dagster_event_sequence_for_step(step_context):
            reports.put((step_context.step.key, event, None))
    except BaseException as exc:  # noqa: BLE001 - handed to the run's thread, which raises it
        error = exc
    reports.put((step_context.step.key, None, error))


class LongestFirst:
    """The order of ready steps (a ``sort_key`` for Dagster's ``ActiveExecution``): higher
    ``dagster/priority`` first, then the step with the most work ahead of it — its asset's weight
    (``weigh``) plus the most of its children's in the run, down to the end of the run (critical path
    first). Weights are taken again after each step of the run ends (:meth:`forget`): what a step reads is
    there once its upstream steps are done, and every step compared at a time is weighed on the same data.
    A step of no single asset weighs nothing."""

    def __init__(self, job_context: PlanExecutionContext, weigh: Weigh | None) -> None:
        self.layer = job_context.job_def.asset_layer
        self.in_run = set(self.layer.selected_asset_keys)
        self.weigh = weigh
        self.ahead: dict[dg.AssetKey, float] = {}

    def forget(self) -> None:
        self.ahead.clear()

    def _ahead(self, key: dg.AssetKey) -> float:
        """``key``'s weight plus the largest of its children's (in the run), recursively."""
        if key not in self.ahead:
            assert self.weigh is not None, "weights need a weigh function"
            children = [c for c in self.layer.asset_graph.get(key).child_keys if c in self.in_run]
            own = max(0.0, float(self.weigh(key)))
            self.ahead[key] = own + max((self._ahead(c) for c in children), default=0.0)
        return self.ahead[key]

    def __call__(self, step: ExecutionStep) -> Any:  # (priority, work ahead), compared as a tuple
        assets = self.layer.get_assets_def_for_node(step.node_handle)
        single = self.weigh is not None and assets is not None and len(assets.keys) == 1
        return -int(step.tags.get(PRIORITY_TAG, 0)), -(self._ahead(assets.key) if single and assets else 0.0)


def threaded_plan_iterator(
    job_context: PlanExecutionContext, execution_plan: ExecutionPlan, max_concurrent: int, weigh: Weigh | None = None
) -> Iterator[dg.DagsterEvent]:
    """``inner_plan_execution_iterator`` of Dagster's in-process executor, with up to ``max_concurrent``
    steps in flight, ready steps started in the order of :class:`LongestFirst`."""
    compute_log_manager = job_context.instance.compute_log_manager
    step_keys = [step.key for step in execution_plan.get_steps_to_execute_in_topo_order()]
    order = LongestFirst(job_context, weigh)
    reports: queue.Queue[_Report] = queue.Queue()
    running: dict[str, tuple[Any, list[dg.DagsterEvent]]] = {}
    with (
        InstanceConcurrencyContext(job_context.instance, job_context.dagster_run) as concurrency,
        execution_plan.start(
            retry_mode=job_context.retry_mode,
            max_concurrent=max_concurrent,
            sort_key_fn=order,
            instance_concurrency_context=concurrency,
            step_dependency_config=job_context.step_dependency_config,
        ) as active,
        ExitStack() as capture,
        ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="step") as pool,
    ):
        log_key = compute_log_manager.build_log_key_for_run(job_context.run_id, create_compute_log_file_key())
        log_context = capture.enter_context(compute_log_manager.capture_logs(log_key))
        yield dg.DagsterEvent.capture_logs(job_context, step_keys, log_key, log_context)
        while not active.is_complete:
            for step in active.get_steps_to_execute(limit=max_concurrent - len(running)):
                step_context = job_context.for_step(step, active.get_known_state())
                running[step.key] = (step_context, [])
                pool.submit(_run_step, step_context, reports)
            yield from active.concurrency_event_iterator(job_context)
            if not running:
                active.sleep_til_ready()
                continue
            key, event, error = reports.get()
            if event is not None:
                running[key][1].append(event)
                yield event
                active.handle_event(event)
                continue
            step_context, events = running.pop(key)
            order.forget()
            if error is not None:
                raise error
            active.verify_complete(job_context, key)
            yield from active.plan_events_iterator(job_context)
            yield from _trigger_hook(step_context, events)


class ThreadedExecutor(dg.Executor):
    """Dagster's in-process executor running up to ``max_concurrent`` ready steps at once, in threads."""

    def __init__(self, retries: RetryMode, max_concurrent: int, weigh: Weigh | None = None) -> None:
        self._retries = retries
        self.max_concurrent = max_concurrent
        self.weigh = weigh

    @property
    def retries(self) -> RetryMode:
        return self._retries

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[dg.DagsterEvent]:
        keys = execution_plan.step_keys_to_execute
        yield dg.DagsterEvent.engine_event(
            plan_context,
            f"Executing steps in process (pid: {os.getpid()}), up to {self.max_concurrent} at once in threads",
            event_specific_data=EngineEventData.in_process(os.getpid(), keys),
        )

        def iterator(job_context: PlanExecutionContext, execution_plan: ExecutionPlan, **_: Any) -> Iterator[dg.DagsterEvent]:
            return threaded_plan_iterator(job_context, execution_plan, self.max_concurrent, self.weigh)

        yield from ExecuteRunWithPlanIterable(
            execution_plan=plan_context.execution_plan,
            iterator=iterator,
            execution_context_manager=PlanExecutionContextManager(
                job=plan_context.job,
                retry_mode=plan_context.retry_mode,
                execution_plan=plan_context.execution_plan,
                run_config=plan_context.run_config,
                dagster_run=plan_context.dagster_run,
                instance=plan_context.instance,
                raise_on_error=plan_context.raise_on_error,
                output_capture=plan_context.output_capture,
            ),
        )
        yield dg.DagsterEvent.engine_event(
            plan_context,
            f"Finished steps in process (pid: {os.getpid()})",
            event_specific_data=EngineEventData.in_process(os.getpid(), keys),
        )


def threaded_executor(max_concurrent: int, weigh: Weigh | None = None) -> dg.ExecutorDefinition:
    """An executor running :class:`ThreadedExecutor` with ``max_concurrent`` steps at once
    by default (run config ``execution: {config: {max_concurrent: N}}`` changes it per run); ``weigh``
    orders the ready steps (:class:`LongestFirst`)."""

    @dg.executor(
        name="in_process_threads",
        config_schema={
            "max_concurrent": dg.Field(int, default_value=max_concurrent, description="steps running at once"),
            "retries": get_retries_config(),
        },
    )
    def _executor(init_context: dg.InitExecutorContext) -> dg.Executor:
        config: dict[str, Any] = dict(init_context.executor_config)
        return ThreadedExecutor(
            RetryMode.from_config(config["retries"]) or RetryMode.ENABLED, max(1, int(config["max_concurrent"])), weigh
        )

    return _executor

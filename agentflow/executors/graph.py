"""The JSON step-graph executor: runs a compiled plan against a run's journal.

Scheduling happens in rounds on one asyncio loop. Each round settles what finished, decides
which steps can start (conditions, foreach lists, arguments), buffers their intents, commits
everything in one journal write and only then starts the calls. A call already recorded as
finished is never started again; one that was started but never finished (a crash) is
started again with the next attempt number and the same idempotency key.

Waits (approvals, timers, events) never hold a task: a call that must wait is parked, the
rest of the graph goes on, and when nothing else can run the outcome is "waiting" with the
time the run must be looked at again.

A streamed plan grows while it runs: `add_steps` takes each larger plan (the steps so far
unchanged, plus new ones), and the run does not end while the stream is open; it waits for
the next arrival instead. `close_stream` gives the whole plan (its outputs make the outcome);
`fail_stream` stops the run: nothing more starts, calls already running finish and are
journaled, and the run fails with the stream's error.

`GraphExecutor` is put together from its parts: `graph_state` (calls, progress, outcome),
`graph_starting` (which steps start), `graph_dispatch` (which calls start, waits) and
`graph_settling` (running calls and recording how they ended).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from agentflow.errors import AgentflowError, LeaseLost, PlanValidationError, ValidationIssue
from agentflow.executors.calls import error_info
from agentflow.executors.graph_dispatch import Dispatching
from agentflow.executors.graph_starting import Starting
from agentflow.executors.graph_state import Call, GraphOutcome
from agentflow.executors.limits import value_size
from agentflow.plan import CompiledPlan, Scope


class GraphExecutor(Starting, Dispatching):
    """Interprets one run of a compiled plan. Create one per execution attempt."""

    async def run(self) -> GraphOutcome:
        poll: asyncio.Future[Any] | None = None
        try:
            while True:
                self._start_ready_steps()
                starting = self._dispatch()
                if not self._finishing(starting):  # else: committed with the run's end
                    await self.journal.commit()
                    self.waits.flush()
                if len(starting) == 1 and not self.running and not self.delayed \
                        and not self.stream_open and self._can_run_inline(starting[0]):
                    self._run_inline(starting[0])
                    continue
                for call in starting:
                    self._emit("call_started", call)
                    self.running[asyncio.ensure_future(self._invoke(call))] = call
                blocked = self._has_blocked()
                if self.stream_error is not None and not self.running:
                    break
                if not self.running and not self.delayed:
                    if self.ready or self.launchable:
                        continue
                    if not self.stream_open:
                        if not blocked or not await self._wait_inline():
                            break
                        continue
                if blocked and poll is None:
                    poll = asyncio.ensure_future(asyncio.sleep(self.poll_interval))
                if self.stream_open and self._arrival is None:
                    self._arrival = asyncio.get_running_loop().create_future()
                pending = [*self.running, *self.delayed,
                           *(future for future in (poll, self._arrival) if future)]
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    if future is self._arrival:
                        self._arrival = None
                    elif future is poll:
                        poll = None
                        if self.waits.refresh() or self._timer_due():
                            self._unblock_all()
                    else:
                        self._settle_future(future)
        except BaseException as error:
            if not isinstance(error, LeaseLost):
                await self._settle_running()
            raise
        finally:
            for future in [*self.running, *self.delayed,
                           *(future for future in (poll, self._arrival) if future)]:
                future.cancel()
        if self.waits.unwritten or not self.journal.last_waits_for_end:
            # waits are written after the entries they follow
            self.journal.flush()
            self.waits.flush()
        return self._outcome()  # the last entries left are committed with the run's end

    def _finishing(self, starting: list[Call]) -> bool:
        """Whether this round ends the execution: nothing starts, runs, waits to be
        retried, is ready, blocked or yet to arrive."""
        return not (starting or self.running or self.delayed or self.ready or self.launchable
                    or self.stream_open or self._has_blocked())

    async def _settle_running(self) -> None:
        """Something ended the round (a tool raised KeyboardInterrupt or SystemExit, Ctrl-C,
        a store error): let the calls still running finish and journal them before the run
        is given back, so no completed call is lost and run again on resume. Nothing new
        starts. A second interrupt while waiting stops the wait."""
        running = list(self.running)
        if running:
            await asyncio.wait(running)
        for future in running:
            with contextlib.suppress(BaseException):
                self._settle_future(future)
        with contextlib.suppress(Exception):
            self.journal.flush()
            self.waits.flush()

    # -- a streamed plan -------------------------------------------------------------

    def add_steps(self, compiled: CompiledPlan) -> None:
        """Take the larger plan a stream has grown to. Its new steps are scheduled as their
        dependencies settle; PlanValidationError if it drops or redefines a step taken
        before (it may have run: the journal must match the plan that gets pinned)."""
        issues = [ValidationIssue("$.steps", "the plan drops or differs from this step as "
                                  "it was streamed before", step_id=sid, code="stream_changed")
                  for sid, old in self.plan.steps.items()
                  if sid not in compiled.steps or compiled.steps[sid].step != old.step]
        if issues:
            raise PlanValidationError(issues)
        new = [sid for sid in compiled.steps if sid not in self.plan.steps]
        self.plan = compiled
        for sid in new:
            unsettled = sum(dep not in self.views for dep in compiled.steps[sid].dependencies)
            self.unsettled_deps[sid] = unsettled
            if unsettled == 0:
                self.ready.append(sid)
        self._wake()

    def close_stream(self, final: CompiledPlan) -> None:
        """The whole plan arrived: take its last steps and its outputs; the run now ends
        when nothing more can run, as for a plan received whole."""
        self.add_steps(final)
        self.stream_open = False

    def fail_stream(self, error: Exception) -> None:
        """The plan will not be completed: start nothing more, let running calls finish
        (journaled), and fail the run with `error`."""
        self.stream_error = error
        self.stream_open = False
        self._wake()

    def _wake(self) -> None:
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    # -- the end ----------------------------------------------------------------------

    def _outcome(self) -> GraphOutcome:
        if self.stream_error is not None:
            return GraphOutcome("failed", None, {"step": None, **error_info(self.stream_error)})
        if self._has_blocked():
            return GraphOutcome("waiting", None, None, self.waits.wake_at())
        outputs, outputs_error = None, None
        try:
            outputs = self.plan.outputs.evaluate(Scope(inputs=self.inputs, steps=self.views))
            # stored with the run: bounded as a call's arguments and result are
            value_size(outputs, self.journal.limits, "$.outputs", "the outputs")
        except AgentflowError as unresolved:
            outputs_error = {"step": None, **error_info(unresolved)}
        if self.first_failure is not None:
            failure = {key: value for key, value in self.first_failure.items() if key != "final"}
            return GraphOutcome("failed", outputs, failure)
        if outputs_error is not None:
            return GraphOutcome("failed", None, outputs_error)
        return GraphOutcome("completed", outputs, None)


__all__ = ["GraphExecutor", "GraphOutcome"]

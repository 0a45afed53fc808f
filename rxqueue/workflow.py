"""Workflows: chains and DAGs of tasks, durable in the store, results passed along.

Two ways to say one, as in apalis::

    flow = Workflow("onboard").then(create_account).delay_for(60).then(send_welcome)

    dag = DagFlow("report")
    users = dag.node(load_users)
    orders = dag.node(load_orders)
    dag.node(join).depends_on(users, orders)

``await flow.push(backend, payload)`` stores the whole run at once and returns
its id; ``WorkerBuilder("w").backend(backend).build(flow)`` runs its steps
(``Router(flow_a, flow_b, default=handler)`` serves several). Every step is an
ordinary task (retries, leases, ``list``/``stats``/CLI) whose id is
``<run id>/<step>``; the run itself is one more task, id ``<run id>``, that
depends on the last steps, so ``backend.get(run_id)`` / ``wait_for(run_id)``
give the run's status and, as ``.result``, its final result.

The join lives in the store (:attr:`Capability.DEPENDENCIES`): a step is
claimable only once the steps it depends on are Done, and its payload is then
their results; a step that ends Killed or Cancelled kills its dependants, and
the run, naming it. A fan-out (``filter_map``) is stored in the transaction that
records its producer's Done. No process holds workflow state, so a crash loses
nothing, and a finished step never runs again.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from rxqueue._html import table
from rxqueue.backends.base import Backend, Capability
from rxqueue.clock import Clock
from rxqueue.codec import Codec, Converter, converter_for, identity
from rxqueue.errors import (
    Abort,
    BuildError,
    InvalidOption,
    TaskNotFound,
    UnsupportedOperation,
)
from rxqueue.task import (
    TERMINAL,
    Done,
    Outcome,
    Status,
    Task,
    TaskId,
    check_seconds,
    new_task_id,
    read_fields,
)
from rxqueue.worker.context import TaskContext
from rxqueue.worker.handler import HandlerSpec, _async_underneath, inspect_handler

__all__ = [
    "DagFlow",
    "cancel_workflow",
    "Node",
    "Router",
    "StepStatus",
    "Workflow",
    "WorkflowStatus",
    "workflow_status",
]

WORKFLOW_KEY: Final = "rxqueue.workflow"  # metadata: the workflow a step belongs to
STEP_KEY: Final = "rxqueue.step"  # metadata: which step it is ("" for the run itself)
RUN_STEP: Final = ""
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")

StepFn = Callable[..., Any]


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidOption(f"{kind} name must be 1-100 letters, digits or _ . : -, got {name!r}")
    return name


def _fn_name(fn: StepFn) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", name)[:100] or "step"


# --- calling a step function -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    """How to call one step function with its inputs (and ``ctx`` if it takes one)."""

    fn: StepFn
    takes_ctx: bool
    converters: tuple[Converter, ...]
    on_loop: bool
    plain_inputs: bool  # every converter is identity: inputs pass as they are

    @classmethod
    def of(cls, fn: StepFn, arity: int, where: str) -> _Call:
        if not callable(fn):
            raise BuildError(f"{where}: a step must be callable, got {type(fn).__name__}")
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            # Some builtins (str, int) have none: trust them with the inputs as they are.
            as_they_are = (identity,) * arity
            return cls(fn, False, as_they_are, _async_underneath(fn), True)
        parameters = signature.parameters
        ctx = parameters.get("ctx")
        takes_ctx = ctx is not None and ctx.kind is not ctx.POSITIONAL_ONLY
        positional = [
            p
            for p in parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "ctx"
        ]
        required = sum(1 for p in positional if p.default is p.empty)
        variadic = any(p.kind is p.VAR_POSITIONAL for p in parameters.values())
        if not (required <= arity and (variadic or arity <= len(positional))):
            wanted = "one input" if arity == 1 else f"{arity} inputs"
            raise BuildError(
                f"{where}: {getattr(fn, '__name__', repr(fn))}{_plain(signature)} must take "
                f"{wanted} (and "
                "optionally `ctx`): a node gets one input per node it depends on, in "
                "depends_on order; the first steps get the workflow's input"
            )
        inputs = positional[:arity]
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable forward refs: no conversion
            hints = {}
        converters = tuple(converter_for(hints.get(p.name, Any)) for p in inputs) + (
            identity,
        ) * max(0, arity - len(inputs))
        plain = all(convert is identity for convert in converters)
        return cls(fn, takes_ctx, converters, _async_underneath(fn), plain)

    async def __call__(self, inputs: Sequence[Any], ctx: TaskContext) -> Any:
        # Runs per step: skip the converters that do nothing (JSON values as they are).
        if self.plain_inputs:
            args = inputs
        else:
            args = [convert(value) for convert, value in zip(self.converters, inputs, strict=True)]
        if self.on_loop:
            result = self.fn(*args, ctx=ctx) if self.takes_ctx else self.fn(*args)
        else:  # a plain function runs in a thread, as plain handlers do
            call = functools.partial(self.fn, *args, ctx=ctx) if self.takes_ctx else None
            result = await asyncio.to_thread(call or functools.partial(self.fn, *args))
        return (await result) if inspect.isawaitable(result) else result


def _plain(signature: inspect.Signature) -> str:
    empty = inspect.Parameter.empty
    return str(
        signature.replace(
            parameters=[p.replace(annotation=empty) for p in signature.parameters.values()],
            return_annotation=empty,
        )
    )


# --- what a compiled flow is -------------------------------------------------------------


@dataclass(slots=True)
class _Step:
    """One stored step of a flow: how the router runs it and what it spawns."""

    name: str
    call: _Call | None  # None: the run itself, or a collect
    inputs: str  # "payload": the workflow input; "list": its dependencies' results
    queue: str | None = None
    max_attempts: int | None = None
    delay: float = 0.0
    # A producer feeding a filter_map: its result's items become tasks of `fanout`.
    fanout: _Step | None = None
    join: str | None = None  # ...joined by this step
    # A fold/collect: skip the producer's own result among its inputs; fold's function.
    skip_first: bool = False
    fold: tuple[Callable[[Any, Any], Any], Any] | None = None
    collect: bool = False
    sinks: tuple[str, ...] = ()  # the run: the steps whose results it returns


class _Flow:
    """What Workflow and DagFlow share: a name, steps, push, and how a worker runs them."""

    name: str

    def _steps(self) -> dict[str, _Step]:
        raise NotImplementedError

    def _plan(
        self, run_id: TaskId, payload: Any, codec: Codec, queue: str, now: float, max_attempts: int
    ) -> list[Task[Any]]:
        raise NotImplementedError

    async def push(
        self, backend: Backend, payload: Any = None, *, run_id: TaskId | None = None
    ) -> TaskId:
        """Store the whole run at once, all or nothing; returns its id.

        ``backend.get(run_id)`` / ``wait_for(run_id)`` then give the run's record:
        Done once every step is, with the final result; Killed if a step was.
        """
        if Capability.DEPENDENCIES not in backend.capabilities:
            raise UnsupportedOperation(
                f"{type(backend).__name__} cannot run workflows: it does not declare "
                "Capability.DEPENDENCIES (the store must hold a step until its parents "
                "are Done). Memory, SQLite and PostgreSQL do; see README, Custom backends"
            )
        self._steps()  # validates
        run = new_task_id() if run_id is None else run_id
        if "/" in run:
            raise InvalidOption(f"run_id must not contain '/', got {run!r}")
        tasks = self._plan(
            run, payload, backend.codec, backend.queue, backend.clock(), backend.max_attempts
        )
        await backend.open()
        await backend._send(tasks, None)
        return run

    def _run_record(
        self, run_id: TaskId, queue: str, now: float, max_attempts: int, last: tuple[TaskId, ...]
    ) -> Task[Any]:
        """The run itself: a task that waits for the ``last`` steps and returns their
        results, so that get/wait_for(run_id) show the run."""
        return _task(
            run_id, None, flow=self.name, step=RUN_STEP, queue=queue, now=now,
            max_attempts=max_attempts, depends_on=last,
        )  # fmt: skip

    def __rxqueue_invoke__(
        self, codec: Codec, clock: Clock
    ) -> Callable[[Task[Any], TaskContext], Awaitable[Outcome]]:
        """``WorkerBuilder(...).build(flow)`` runs this flow's steps."""
        return Router(self).bind(codec, clock)


def _task(
    task_id: TaskId,
    args: Any,
    *,
    flow: str,
    step: str,
    queue: str,
    now: float,
    max_attempts: int,
    delay: float = 0.0,
    depends_on: tuple[TaskId, ...] = (),
    extra: Mapping[str, Any] | None = None,
) -> Task[Any]:
    metadata = {WORKFLOW_KEY: flow, STEP_KEY: step, **(extra or {})}
    return read_fields(
        (task_id, queue, args, Status.PENDING, 0, max_attempts, 0, now + delay, now,
         None, None, None, None, None, metadata, None, None, None, None, depends_on)
    )  # fmt: skip


# --- sequential workflows -------------------------------------------------------------------


@dataclass(slots=True)
class _Stage:
    kind: str  # "then" | "map" | "fold" | "collect"
    name: str
    fn: StepFn | None = None
    initial: Any = None
    delay: float = 0.0
    queue: str | None = None
    max_attempts: int | None = None


class Workflow(_Flow):
    """A chain of steps: each step's return value is the next one's input.

    ``.then(fn)`` adds a step; ``.delay_for(s)``: the next step runs no sooner
    than ``s`` seconds after the previous one finished; ``.filter_map(fn)``: the
    previous step returned a list, and each item (``None`` items skipped) becomes
    a task of its own running ``fn``, in parallel; ``.fold(fn, initial)`` or
    ``.collect()`` must follow it: one step that gets their results, in item
    order, ``None`` results dropped, once every one of them finished.
    """

    def __init__(self, name: str) -> None:
        self.name = _check_name("workflow", name)
        self._stages: list[_Stage] = []
        self._delay = 0.0
        self._compiled: dict[str, _Step] | None = None

    def _add(self, stage: _Stage) -> Workflow:
        stage.delay, self._delay = self._delay, 0.0
        self._stages.append(stage)
        self._compiled = None
        return self

    def _stage_name(self, name: str | None, fn: StepFn | None, kind: str) -> str:
        base = (
            _check_name("step", name)
            if name is not None
            else (_fn_name(fn) if fn is not None else kind)
        )
        return f"{len(self._stages) + 1}-{base}"

    def then(
        self, fn: StepFn, *, name: str | None = None, queue: str | None = None,
        max_attempts: int | None = None,
    ) -> Workflow:  # fmt: skip
        """Add a step: ``fn(previous result)`` (the first gets the workflow's input)."""
        _Call.of(fn, 1, f"workflow {self.name!r}, then()")
        return self._add(
            _Stage(
                "then",
                self._stage_name(name, fn, "then"),
                fn,
                queue=queue,
                max_attempts=max_attempts,
            )
        )

    def delay_for(self, seconds: float) -> Workflow:
        """The next step runs no sooner than ``seconds`` after the previous one finished."""
        self._delay += check_seconds("delay_for", seconds, minimum=0.0)
        return self

    def filter_map(
        self, fn: StepFn, *, name: str | None = None, queue: str | None = None,
        max_attempts: int | None = None,
    ) -> Workflow:  # fmt: skip
        """Each item of the previous result (or of the input) becomes a task ``fn(item)``."""
        _Call.of(fn, 1, f"workflow {self.name!r}, filter_map()")
        return self._add(
            _Stage(
                "map", self._stage_name(name, fn, "map"), fn, queue=queue, max_attempts=max_attempts
            )
        )

    def fold(
        self, fn: Callable[[Any, Any], Any], initial: Any, *, name: str | None = None
    ) -> Workflow:
        """After filter_map: ``fn(accumulator, result)`` over the results, in item order."""
        if not callable(fn):
            raise BuildError(f"workflow {self.name!r}, fold(): fn must be callable")
        return self._add(_Stage("fold", self._stage_name(name, fn, "fold"), fn, initial))

    def collect(self, *, name: str | None = None) -> Workflow:
        """After filter_map: the list of the results, in item order."""
        return self._add(_Stage("collect", self._stage_name(name, None, "collect")))

    def _steps(self) -> dict[str, _Step]:
        if self._compiled is not None:
            return self._compiled
        stages = self._stages
        if not stages:
            raise BuildError(f"workflow {self.name!r} has no steps; add .then(fn)")
        if self._delay:
            raise BuildError(
                f"workflow {self.name!r} ends with delay_for(): add the step it delays"
            )
        steps: dict[str, _Step] = {}
        for index, stage in enumerate(stages):
            after = stages[index + 1] if index + 1 < len(stages) else None
            before = stages[index - 1] if index else None
            if stage.kind == "map" and (after is None or after.kind not in ("fold", "collect")):
                raise BuildError(
                    f"workflow {self.name!r}: filter_map() must be followed by fold() or "
                    "collect(), which receive its results"
                )
            if stage.kind in ("fold", "collect") and (before is None or before.kind != "map"):
                raise BuildError(f"workflow {self.name!r}: {stage.kind}() must follow filter_map()")
            where = f"workflow {self.name!r}, step {stage.name}"
            if stage.kind == "then":
                assert stage.fn is not None
                step = _Step(stage.name, _Call.of(stage.fn, 1, where),
                             "payload" if index == 0 else "list")  # fmt: skip
            elif stage.kind == "map":
                assert stage.fn is not None
                step = _Step(stage.name, _Call.of(stage.fn, 1, where), "payload")
            else:
                step = _Step(stage.name, None, "list", skip_first=index >= 2)
                if stage.kind == "fold":
                    assert stage.fn is not None
                    step.fold = (stage.fn, stage.initial)
                else:
                    step.collect = True
            step.queue, step.max_attempts, step.delay = (
                stage.queue,
                stage.max_attempts,
                stage.delay,
            )
            steps[stage.name] = step
        for index, stage in enumerate(stages[:-2]):
            if stages[index + 1].kind == "map":  # this step's items fan out
                steps[stage.name].fanout = steps[stages[index + 1].name]
                steps[stage.name].join = stages[index + 2].name
        steps[RUN_STEP] = _Step(RUN_STEP, None, "list", sinks=(stages[-1].name,))
        self._compiled = steps
        return steps

    def _plan(
        self, run_id: TaskId, payload: Any, codec: Codec, queue: str, now: float, max_attempts: int
    ) -> list[Task[Any]]:
        steps = self._steps()
        stages = self._stages
        ids = {stage.name: f"{run_id}/{stage.name}" for stage in stages if stage.kind != "map"}
        tasks: list[Task[Any]] = []
        previous: tuple[TaskId, ...] = ()
        for index, stage in enumerate(stages):
            step = steps[stage.name]
            if stage.kind == "map":
                if index == 0:  # the input itself fans out, now
                    try:
                        spawned = _fanout(run_id, self.name, step, payload, identity, queue,
                                          now, max_attempts)  # fmt: skip
                    except Abort as exc:
                        raise InvalidOption(f"{exc}: push a list") from None
                    tasks += spawned
                    previous = tuple(task.id for task in spawned)
                continue
            # The first step gets the input; a join with nothing to wait for (an empty
            # input fanned out) gets the empty list of results.
            args = payload if index == 0 else (None if previous else [])
            tasks.append(
                _task(ids[stage.name], args, flow=self.name, step=stage.name,
                      queue=stage.queue or queue, now=now,
                      max_attempts=stage.max_attempts or max_attempts, delay=stage.delay,
                      depends_on=previous)
            )  # fmt: skip
            previous = (ids[stage.name],)
        tasks.append(self._run_record(run_id, queue, now, max_attempts, previous))
        return tasks

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={[s.name for s in self._stages]})"


def _fanout(
    run_id: TaskId, flow: str, step: _Step, items: Any, encode: Callable[[Any], Any],
    queue: str, now: float, max_attempts: int,
) -> list[Task[Any]]:  # fmt: skip
    """The tasks of a filter_map: one per item that is not None, payloads ``encode``-d."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise Abort(
            f"filter_map step {step.name} of workflow {flow!r} needs a list to fan out, got "
            f"{type(items).__name__}"
        )
    return [
        _task(f"{run_id}/{step.name}/{index}", encode(item), flow=flow, step=step.name,
              queue=step.queue or queue, now=now, max_attempts=step.max_attempts or max_attempts,
              delay=step.delay)
        for index, item in enumerate(items)
        if item is not None
    ]  # fmt: skip


# --- DAGs ---------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Node:
    """One step of a :class:`DagFlow`; ``node.depends_on(a, b)`` returns the node."""

    dag: DagFlow
    name: str
    fn: StepFn
    queue: str | None = None
    max_attempts: int | None = None
    parents: tuple[Node, ...] = ()

    def depends_on(self, *nodes: Node) -> Node:
        """Run once every one of ``nodes`` is Done, with their results as positional
        arguments, in this order."""
        for node in nodes:
            if not isinstance(node, Node):
                raise BuildError(
                    f"node {self.name!r}: depends_on() takes nodes made by dag.node(), got "
                    f"{type(node).__name__}"
                )
        self.parents += nodes
        self.dag._compiled = None
        return self

    def __repr__(self) -> str:
        return f"Node({self.name!r})"


class DagFlow(_Flow):
    """Steps as a directed acyclic graph: a node runs once all its parents are Done
    and gets their results as arguments (nodes without parents get the input).

    The run's result is its one sink node's result, or with several sinks a dict
    of their results by node name.
    """

    def __init__(self, name: str) -> None:
        self.name = _check_name("workflow", name)
        self._nodes: dict[str, Node] = {}
        self._compiled: dict[str, _Step] | None = None

    def node(
        self, fn: StepFn, *, name: str | None = None, queue: str | None = None,
        max_attempts: int | None = None,
    ) -> Node:  # fmt: skip
        """Add a step running ``fn``; ``queue=`` sends it to the workers of that queue."""
        if not callable(fn):
            raise BuildError(f"dag {self.name!r}: node() takes a function, got {fn!r}")
        node_name = _check_name("node", name) if name is not None else _fn_name(fn)
        if node_name in self._nodes:
            raise BuildError(
                f"dag {self.name!r} already has a node named {node_name!r}; pass name="
            )
        node = Node(self, node_name, fn, queue, max_attempts)
        self._nodes[node_name] = node
        self._compiled = None
        return node

    def validate(self) -> None:
        """Refuse an empty graph, nodes of another DAG, cycles and step functions
        whose signature does not take one input per parent (:class:`BuildError`)."""
        self._steps()

    def _order(self) -> list[Node]:
        """The nodes, parents before children; a cycle or a stranger is an error."""
        nodes = self._nodes
        if not nodes:
            raise BuildError(f"dag {self.name!r} has no nodes; add dag.node(fn)")
        for node in nodes.values():
            for parent in node.parents:
                if nodes.get(parent.name) is not parent:
                    raise BuildError(
                        f"dag {self.name!r}: node {node.name!r} depends on {parent.name!r}, "
                        "which is not a node of this dag (made by another DagFlow?)"
                    )
        order: list[Node] = []
        state: dict[str, int] = {}  # 1: on the path, 2: done

        def visit(node: Node, path: list[str]) -> None:
            if state.get(node.name) == 2:
                return
            if state.get(node.name) == 1:
                cycle = [*path[path.index(node.name) :], node.name]
                raise BuildError(f"dag {self.name!r} has a cycle: {' -> '.join(cycle)}")
            state[node.name] = 1
            for parent in node.parents:
                visit(parent, [*path, node.name])
            state[node.name] = 2
            order.append(node)

        for node in nodes.values():
            visit(node, [])
        return order

    def _steps(self) -> dict[str, _Step]:
        if self._compiled is not None:
            return self._compiled
        order = self._order()
        steps: dict[str, _Step] = {}
        for node in order:
            if len(set(node.parents)) != len(node.parents):
                raise BuildError(f"dag {self.name!r}: node {node.name!r} depends on a node twice")
            where = f"dag {self.name!r}, node {node.name!r}"
            arity = len(node.parents) or 1
            steps[node.name] = _Step(
                node.name, _Call.of(node.fn, arity, where),
                "list" if node.parents else "payload", node.queue, node.max_attempts,
            )  # fmt: skip
        children = {parent.name for node in order for parent in node.parents}
        sinks = tuple(node.name for node in order if node.name not in children)
        steps[RUN_STEP] = _Step(RUN_STEP, None, "list", sinks=sinks)
        self._compiled = steps
        return steps

    def _plan(
        self, run_id: TaskId, payload: Any, codec: Codec, queue: str, now: float, max_attempts: int
    ) -> list[Task[Any]]:
        steps = self._steps()
        encoded, placeholder = payload, None  # push encodes them
        tasks = [
            _task(f"{run_id}/{node.name}", placeholder if node.parents else encoded,
                  flow=self.name, step=node.name, queue=node.queue or queue, now=now,
                  max_attempts=node.max_attempts or max_attempts,
                  depends_on=tuple(f"{run_id}/{parent.name}" for parent in node.parents))
            for node in self._order()
        ]  # fmt: skip
        sinks = tuple(f"{run_id}/{name}" for name in steps[RUN_STEP].sinks)
        tasks.append(self._run_record(run_id, queue, now, max_attempts, sinks))
        return tasks

    def to_dot(self) -> str:
        """The graph as Graphviz text (``dot -Tsvg``)."""
        self._order()
        lines = [f'digraph "{self.name}" {{', "  rankdir=LR;"]
        for node in self._nodes.values():
            label = node.name if node.queue is None else f"{node.name}\\n(queue {node.queue})"
            lines.append(f'  "{node.name}" [label="{label}"];')
        for node in self._nodes.values():
            for parent in node.parents:
                lines.append(f'  "{parent.name}" -> "{node.name}";')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"DagFlow({self.name!r}, nodes={list(self._nodes)})"


# --- running steps in a worker ---------------------------------------------------------


class Router:
    """What a worker runs when it serves workflows: each claimed step goes to its
    flow's step function; tasks that are no workflow's step go to ``default``.

    ``WorkerBuilder(...).build(flow)`` is ``build(Router(flow))``.
    """

    def __init__(self, *flows: _Flow, default: Callable[..., Any] | None = None):
        self.flows: dict[str, _Flow] = {}
        for flow in flows:
            if not isinstance(flow, _Flow):
                raise BuildError(
                    f"Router takes Workflow or DagFlow objects, got {type(flow).__name__}; "
                    "pass a plain handler as default="
                )
            if flow.name in self.flows:
                raise BuildError(f"two workflows named {flow.name!r} in one Router")
            flow._steps()  # refuse a malformed flow at build time, not at its first task
            self.flows[flow.name] = flow
        self.default = default
        self.__name__ = f"Router({', '.join(self.flows)})"

    def bind(
        self, codec: Codec, clock: Clock
    ) -> Callable[[Task[Any], TaskContext], Awaitable[Outcome]]:
        """The worker's innermost call for these flows (layers wrap it)."""
        plain: HandlerSpec | None = (
            None if self.default is None else inspect_handler(self.default, codec)
        )
        flows = {name: flow._steps() for name, flow in self.flows.items()}
        decode = codec.decode

        async def invoke(task: Task[Any], ctx: TaskContext) -> Outcome:
            metadata = task.metadata
            flow_name = metadata.get(WORKFLOW_KEY)
            if flow_name is None:
                if plain is None:
                    raise Abort(
                        f"task {task.id} is no workflow's step and this worker has no "
                        "default handler: pass Router(..., default=handler)"
                    )
                result = await plain.call(plain.decode(task), ctx)
                return Done(result)
            steps = flows.get(flow_name)
            step = None if steps is None else steps.get(metadata.get(STEP_KEY, ""))
            if step is None:
                raise Abort(
                    f"task {task.id} is step {metadata.get(STEP_KEY)!r} of workflow "
                    f"{flow_name!r}, which this worker does not serve (serving: "
                    f"{', '.join(flows) or 'none'}); build the worker with that workflow"
                )
            args = task.args
            value = decode(args) if isinstance(args, bytes) else args
            result = await _run_step(step, value, ctx)
            if step.fanout is None:
                return Done(result)
            run_id = task.id.rsplit("/", 1)[0]
            spawned = _fanout(run_id, flow_name, step.fanout, result, codec.encode,
                              task.queue, clock(), task.max_attempts)  # fmt: skip
            return Done(result, spawn=tuple(spawned), join=f"{run_id}/{step.join}")

        return invoke

    __rxqueue_invoke__ = bind  # WorkerBuilder(...).build(router)

    def __repr__(self) -> str:
        return self.__name__


async def _run_step(step: _Step, value: Any, ctx: TaskContext) -> Any:
    if step.sinks:  # the run: its result is the last steps' result(s)
        if len(step.sinks) == 1:
            return value[0]
        return dict(zip(step.sinks, value, strict=True))
    if step.call is not None:
        inputs = [value] if step.inputs == "payload" else value
        return await step.call(inputs, ctx)
    results = [each for each in (value[1:] if step.skip_first else value) if each is not None]
    if step.collect:
        return results
    assert step.fold is not None
    fn, accumulator = step.fold
    for each in results:
        accumulator = fn(accumulator, each)
        if inspect.isawaitable(accumulator):
            accumulator = await accumulator
    return accumulator


# --- a run's status -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepStatus:
    """One step of a run (a filter_map item's name ends with its index)."""

    name: str
    id: TaskId
    queue: str
    status: Status
    attempts: int
    result: Any
    last_error: str | None


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A run and every step of it; shows as a table in notebooks."""

    run_id: TaskId
    workflow: str
    status: Status
    result: Any
    error: str | None
    steps: list[StepStatus] = field(default_factory=list)

    @property
    def counts(self) -> dict[Status, int]:
        counts = dict.fromkeys(Status, 0)
        for step in self.steps:
            counts[step.status] += 1
        return {status: n for status, n in counts.items() if n}

    def __str__(self) -> str:
        width = max([len(step.name) for step in self.steps] + [4])
        lines = [f"workflow {self.workflow} run {self.run_id}: {self.status}"]
        for step in self.steps:
            detail = step.last_error if step.status is Status.KILLED else repr(step.result)
            lines.append(
                f"  {step.name:<{width}}  {step.status.value:<9}  attempts {step.attempts}"
                f"  {detail if step.status in (Status.DONE, Status.KILLED) else ''}".rstrip()
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = [
            (s.name, s.status.value, s.attempts, s.queue,
             s.last_error if s.status is Status.KILLED else s.result)
            for s in self.steps
        ]  # fmt: skip
        caption = f"workflow {self.workflow}, run {self.run_id}: {self.status.value}"
        return table(
            rows,
            header=("step", "status", "attempts", "queue", "result / error"),
            caption=caption,
        )


def _step_order(run_id: TaskId, tasks: Sequence[Task[Any]]) -> Callable[[Task[Any]], Any]:
    """Steps in flow order: a chain's by number, a DAG's as stored (parents first),
    and a fan-out's items after the step they belong to, by item number."""
    prefix = len(run_id) + 1
    first_seen: dict[str, int] = {}
    for index, task in enumerate(tasks):
        first_seen.setdefault(task.id[prefix:].split("/", 1)[0], index)

    def key(task: Task[Any]) -> tuple[int, int, int]:
        step, _, item = task.id[prefix:].partition("/")
        number, dash, _ = step.partition("-")
        rank = int(number) if dash and number.isdigit() else first_seen[step]
        return (rank, int(item) if item.isdigit() else -1, 0)

    return key


async def workflow_status(backend: Backend, run_id: TaskId) -> WorkflowStatus:
    """Every step of run ``run_id`` with its status, attempts and result."""
    tasks = await backend.family(run_id)
    run = next((task for task in tasks if task.id == run_id), None)
    if run is None:
        raise TaskNotFound(f"no workflow run {run_id!r} in this store")
    prefix = len(run_id) + 1
    tasks = sorted(tasks, key=_step_order(run_id, tasks))
    steps = [
        StepStatus(
            task.id[prefix:],
            task.id,
            task.queue,
            task.status,
            task.attempts,
            task.result if task.status is Status.DONE else None,
            task.last_error,
        )
        for task in tasks
        if task.id != run_id
    ]
    return WorkflowStatus(
        run_id,
        str(run.metadata.get(WORKFLOW_KEY, "")),
        run.status,
        run.result if run.status is Status.DONE else None,
        run.last_error,
        steps,
    )


async def cancel_workflow(
    backend: Backend, run_id: TaskId, reason: str = "cancelled by request"
) -> int:
    """Cancel run ``run_id``: every unfinished step of this backend's queue, then the
    run itself. Waiting and ready steps end Cancelled at once, running ones in their
    workers (``backend.cancel``); whatever depends on them ends Killed, naming them.
    Returns how many steps were asked to cancel. A step of another queue is asked
    through a backend of that queue (or ends Killed when a step it waits for does).
    """
    tasks = await backend.family(run_id)
    run = next((task for task in tasks if task.id == run_id), None)
    if run is None:
        raise TaskNotFound(f"no workflow run {run_id!r} in this store")
    asked = 0
    for task in sorted(tasks, key=_step_order(run_id, tasks)):
        if task.id == run_id or task.status in TERMINAL or task.queue != backend.queue:
            continue
        await backend.cancel(task.id, reason)
        asked += 1
    if run.queue == backend.queue:
        await backend.cancel(run_id, reason)  # finished meanwhile, killed: left as it is
    return asked

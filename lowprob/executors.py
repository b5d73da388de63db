"""Where independent tasks run: in this process (serial), in local worker processes, or on a Ray cluster.

A task is a picklable object with a ``group`` (tasks of one group share an expensive state, e.g. a loaded
model) and a ``run()`` that computes its result in a worker. The driver hands each free worker the next task
of the group it ran last, so a worker loads each model once, and receives every result as it arrives: the
caller is the only writer of its output file, which therefore stays exact and resumable. A worker that dies
mid-task (killed, out of memory) is replaced and its task run again, at most ``retries`` times; each task's
result is delivered once, so a caller that merges results by task id never counts anything twice.

Only the task objects travel (a model name, spec text, seeds and settings; never weights): every worker loads
its model itself, from its own disk or cache.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import pickle
import signal
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Literal, Protocol, TypeVar

import click
import torch
from pydantic import Field

from lowprob.config_files import StrictModel
from lowprob.core.errors import LowprobError

ExecutorKind = Literal["serial", "processes", "ray"]
EXECUTORS: tuple[ExecutorKind, ...] = ("serial", "processes", "ray")


class Task(Protocol):
    """A unit of work: run in a worker, its result sent back to the driver."""

    @property
    def group(self) -> Hashable:
        """Tasks of one group share a worker state (see :func:`worker_state`)."""
        ...

    def run(self) -> Any:
        """Compute the task's result (in a worker; it is pickled back to the driver)."""
        ...


T = TypeVar("T", bound=Task)
S = TypeVar("S")


@dataclass(frozen=True)
class WorkerContext:
    """What a worker was given: its torch threads and the device its tasks should use (``None``: their own
    default, e.g. in the driver's process)."""

    threads: int
    device: str | None


_context = WorkerContext(threads=torch.get_num_threads(), device=None)
_state: OrderedDict[Hashable, Any] = OrderedDict()


def worker_context() -> WorkerContext:
    """The context of the worker this runs in."""
    return _context


def worker_state(key: Hashable, load: Callable[[], S]) -> S:
    """The state under ``key`` (e.g. a loaded model) in this worker, loaded once; a worker keeps one state,
    so switching to another key drops the previous one and its memory."""
    if key not in _state:
        _state.clear()
        _state[key] = load()
    return _state[key]


def _start_worker(threads: int, device: str | None) -> None:
    """Set up a fresh worker process: its torch threads (its CPU allocation) and device."""
    global _context
    torch.set_num_threads(threads)
    _context = WorkerContext(threads, device)
    _state.clear()


class ExecutorSettings(StrictModel):
    """How to run tasks: ``--executor``, ``--workers``, ``--address``, ``--cpus-per-worker``, ``--gpus-per-worker``
    on the command line, the same keys in an experiment file."""

    executor: ExecutorKind = "serial"
    workers: int | None = Field(default=None, ge=1, le=4096,
                                description="worker count (default: the CPUs available / cpus_per_worker)")
    address: str | None = Field(default=None, description="Ray cluster: 'auto', 'ray://host:port', or none to "
                                                          "start a local one")
    cpus_per_worker: int = Field(default=1, ge=1, le=1024, description="CPUs (torch threads) of each worker")
    gpus_per_worker: float = Field(default=0, ge=0, le=64, description="GPUs of each worker (its tasks use cuda)")
    retries: int = Field(default=3, ge=0, le=100, description="reruns of a task whose worker died")

    def merged(self, **overrides: Any) -> ExecutorSettings:
        """These settings (only the executor keys, also of a config file that extends them) with every override
        that is not ``None`` (command-line options over file keys)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return ExecutorSettings.model_validate({**self.model_dump(include=set(ExecutorSettings.model_fields)),
                                                **given})

    def create(self) -> Executor:
        """The executor these settings describe; refuses an address without Ray and Ray where it is missing."""
        if self.address is not None and self.executor != "ray":
            raise LowprobError(f"--address is a Ray cluster address; it needs --executor ray, not {self.executor}")
        if self.executor == "serial":
            return SerialExecutor()
        if self.executor == "processes":
            return ProcessExecutor(self)
        return RayExecutor(self)


class Executor:
    """Runs tasks and yields ``(task, result)`` as each finishes (in completion order, not submission order)."""

    settings: ExecutorSettings
    in_process = False
    """Whether tasks run in the driver's own process (then callers may share their loaded objects with them)."""

    def run(self, tasks: Sequence[T]) -> Iterator[tuple[T, Any]]:
        """Run every task; a task's error (a :class:`LowprobError` from its code) stops the run and is raised."""
        if not tasks:
            return
        pool = self._pool(min(self._worker_count(), len(tasks)))
        queue = _GroupQueue(tasks)
        busy: dict[int, tuple[int, T]] = {}
        lost: dict[int, int] = {}
        try:
            for slot in range(pool.size):
                if queue:
                    busy[slot] = queue.pop(None)
                    pool.submit(slot, busy[slot][1])
            while busy:
                slot, outcome = pool.wait(list(busy))
                index, task = busy.pop(slot)
                if isinstance(outcome, _Lost):
                    lost[index] = lost.get(index, 0) + 1
                    if lost[index] > self.settings.retries:
                        raise LowprobError(f"a worker died running {_describe(task)} {lost[index]} times "
                                           f"({outcome.reason}); giving up after {self.settings.retries} reruns")
                    pool.restart(slot)
                    queue.put_back(index, task)
                elif isinstance(outcome, _Failed):
                    raise outcome.error
                if queue:  # the worker's next task first, so it computes while the caller handles this result
                    busy[slot] = queue.pop(task.group)
                    pool.submit(slot, busy[slot][1])
                if not isinstance(outcome, _Lost):
                    yield task, outcome
        finally:
            pool.close()

    def _worker_count(self) -> int:
        raise NotImplementedError

    def _pool(self, size: int) -> _Pool:
        raise NotImplementedError


class SerialExecutor(Executor):
    """Every task in this process, one after the other (the default)."""

    in_process = True

    def __init__(self) -> None:
        self.settings = ExecutorSettings()

    def run(self, tasks: Sequence[T]) -> Iterator[tuple[T, Any]]:
        for task in tasks:
            yield task, task.run()


class ProcessExecutor(Executor):
    """Tasks in local worker processes (forked from a server that has torch loaded), one task at a time each."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings

    def _worker_count(self) -> int:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return self.settings.workers or max(1, cpus // self.settings.cpus_per_worker)

    def _pool(self, size: int) -> _Pool:
        return _ProcessPool(size, self.settings)


class RayExecutor(Executor):
    """Tasks on Ray actors (one per worker, each with its CPUs and GPUs), on a local or a remote cluster."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings
        try:
            import ray
        except ImportError:
            raise LowprobError("--executor ray needs Ray: pip install 'lowprob[ray]'") from None
        self._ray = ray

    def _worker_count(self) -> int:
        self._connect()
        if self.settings.workers is not None:
            return self.settings.workers
        cpus = int(self._ray.cluster_resources().get("CPU", 1))
        return max(1, cpus // self.settings.cpus_per_worker)

    def _connect(self) -> None:
        """Join the cluster at ``address`` (or start a local one) unless this process is already connected."""
        if self._ray.is_initialized():
            return
        try:
            self._ray.init(address=self.settings.address, include_dashboard=False, log_to_driver=False,
                           configure_logging=False)
        except ConnectionError as exc:
            raise LowprobError(f"cannot reach the Ray cluster at {self.settings.address!r}: {exc}") from None

    def _pool(self, size: int) -> _Pool:
        self._connect()
        have = self._ray.cluster_resources()
        for resource, each in (("CPU", self.settings.cpus_per_worker), ("GPU", self.settings.gpus_per_worker)):
            if size * each > have.get(resource, 0):
                raise LowprobError(f"{size} workers with {each:g} {resource}s each need {size * each:g} {resource}s; "
                                   f"the Ray cluster has {have.get(resource, 0):g} (use fewer --workers)")
        return _RayPool(self._ray, size, self.settings)


class _GroupQueue:
    """Pending tasks by group, in submission order; a free worker gets more of its last group first."""

    def __init__(self, tasks: Sequence[T]) -> None:
        self._groups: OrderedDict[Hashable, deque[tuple[int, Any]]] = OrderedDict()
        for index, task in enumerate(tasks):
            self._groups.setdefault(task.group, deque()).append((index, task))

    def __bool__(self) -> bool:
        return bool(self._groups)

    def pop(self, group: Hashable | None) -> tuple[int, Any]:
        key = group if group in self._groups else next(iter(self._groups))
        tasks = self._groups[key]
        item = tasks.popleft()
        if not tasks:
            del self._groups[key]
        return item

    def put_back(self, index: int, task: Task) -> None:
        self._groups.setdefault(task.group, deque()).appendleft((index, task))
        self._groups.move_to_end(task.group, last=False)


@dataclass(frozen=True)
class _Lost:
    """The worker died before sending a result."""

    reason: str


@dataclass(frozen=True)
class _Failed:
    """The task raised ``error`` (sent back to the driver)."""

    error: BaseException


class _Pool(Protocol):
    size: int

    def submit(self, slot: int, task: Task) -> None: ...

    def wait(self, busy: list[int]) -> tuple[int, Any]: ...

    def restart(self, slot: int) -> None: ...

    def close(self) -> None: ...


def _describe(task: Task) -> str:
    return getattr(task, "description", type(task).__name__)


def _sendable(error: BaseException) -> BaseException:
    """``error`` if it pickles (a :class:`LowprobError` does), else a :class:`LowprobError` with its traceback."""
    try:
        pickle.dumps(error)
        return error
    except Exception:
        text = "".join(traceback.format_exception(error))
        return LowprobError(f"a task failed in its worker:\n{text}")


def _process_main(conn: Connection, threads: int, device: str | None) -> None:
    """A worker process: run each task received on ``conn`` and send back its result or its error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the driver, which then ends its workers
    _start_worker(threads, device)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        try:
            reply: tuple[str, Any] = ("ok", task.run())
        except Exception as exc:
            reply = ("error", _sendable(exc))
        try:
            conn.send(reply)
        except (BrokenPipeError, ConnectionResetError):
            return  # the driver is gone (killed or interrupted): nobody to answer, and nothing of its is lost
        except Exception as exc:  # the result does not pickle: say so instead
            conn.send(("error", _sendable(exc)))


def _context_for_processes() -> Any:
    """Forkserver where there is one (workers fork from a server that has imported torch, TransformerLens and lowprob,
    seconds each, and never from a driver holding threads or CUDA state), spawn elsewhere."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "transformer_lens.model_bridge", "lowprob.executors", "lowprob.api"])
        return ctx
    return multiprocessing.get_context("spawn")


class _ProcessPool:
    """``size`` worker processes, each with its own pipe; a dead one is seen by its process sentinel."""

    def __init__(self, size: int, settings: ExecutorSettings) -> None:
        self.size, self._settings, self._ctx = size, settings, _context_for_processes()
        gpus = torch.cuda.device_count() if settings.gpus_per_worker > 0 else 0
        if settings.gpus_per_worker > 0 and gpus == 0:
            raise LowprobError("--gpus-per-worker needs CUDA, which this machine does not have")
        self._devices = [f"cuda:{slot % gpus}" if gpus else None for slot in range(size)]
        self._workers: list[tuple[Any, Connection]] = [self._start(slot) for slot in range(size)]
        self._busy: set[int] = set()

    def _start(self, slot: int) -> tuple[Any, Connection]:
        ours, theirs = self._ctx.Pipe()
        process = self._ctx.Process(target=_process_main, daemon=True, name=f"lowprob-worker-{slot}",
                                    args=(theirs, self._settings.cpus_per_worker, self._devices[slot]))
        process.start()
        theirs.close()
        return process, ours

    def submit(self, slot: int, task: Task) -> None:
        self._busy.add(slot)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a dead worker: wait() reports it
            self._workers[slot][1].send(task)

    def wait(self, busy: list[int]) -> tuple[int, Any]:
        handles: dict[Any, int] = {self._workers[s][1]: s for s in busy}
        handles.update({self._workers[s][0].sentinel: s for s in busy})
        ready = wait(list(handles))
        slot = handles[ready[0]]
        self._busy.discard(slot)
        process, conn = self._workers[slot]
        try:
            if conn.poll():
                status, value = conn.recv()
                return slot, value if status == "ok" else _Failed(value)
        except (EOFError, ConnectionResetError):
            pass
        process.join(timeout=1)
        return slot, _Lost(f"exit code {process.exitcode}")

    def restart(self, slot: int) -> None:
        process, conn = self._workers[slot]
        conn.close()
        if process.is_alive():
            process.kill()
        process.join()
        self._workers[slot] = self._start(slot)

    def close(self) -> None:
        """Idle workers exit when their pipe closes; those still running a task (the run was stopped) are killed."""
        for slot, (process, conn) in enumerate(self._workers):
            conn.close()
            if slot in self._busy:
                process.kill()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()


class _RayWorker:
    """The body of a Ray actor: sets its threads from its CPU allocation and its device from its GPUs."""

    def __init__(self, threads: int, gpus: float) -> None:
        _start_worker(threads, "cuda" if gpus > 0 else None)

    def run(self, task: Task) -> Any:
        return task.run()


_idle_actors: dict[tuple[Any, ...], list[Any]] = {}
"""Ray actors a finished run left idle, by (job, CPUs, GPUs): the next run in this driver reuses them with their
loaded models instead of starting new worker processes (seconds each)."""


class _RayPool:
    """``size`` Ray actors, each asking for ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs."""

    def __init__(self, ray: Any, size: int, settings: ExecutorSettings) -> None:
        self.size, self._ray = size, ray
        self._args = (settings.cpus_per_worker, settings.gpus_per_worker)
        self._actor_class = ray.remote(num_cpus=settings.cpus_per_worker, num_gpus=settings.gpus_per_worker,
                                       max_restarts=0)(_RayWorker)
        self._idle = _idle_actors.setdefault((ray.get_runtime_context().get_job_id(), *self._args), [])
        self._actors = [self._idle.pop() if self._idle else self._actor_class.remote(*self._args)
                        for _ in range(size)]
        self._refs: dict[Any, int] = {}

    def submit(self, slot: int, task: Task) -> None:
        self._refs[self._actors[slot].run.remote(task)] = slot

    def wait(self, busy: list[int]) -> tuple[int, Any]:
        ready, _ = self._ray.wait(list(self._refs), num_returns=1)
        slot = self._refs.pop(ready[0])
        try:
            return slot, self._ray.get(ready[0])
        except self._ray.exceptions.RayActorError as exc:
            return slot, _Lost(type(exc).__name__)
        except self._ray.exceptions.RayTaskError as exc:
            return slot, _Failed(exc.cause if isinstance(exc.cause, BaseException) else exc)

    def restart(self, slot: int) -> None:
        self._ray.kill(self._actors[slot], no_restart=True)
        self._actors[slot] = self._actor_class.remote(*self._args)

    def close(self) -> None:
        """Keep idle actors for the next run; kill those still running a task (the run was stopped)."""
        running = set(self._refs.values())
        for slot, actor in enumerate(self._actors):
            if slot in running:
                self._ray.kill(actor, no_restart=True)
            else:
                self._idle.append(actor)
        self._refs.clear()


def add_executor_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The executor's command-line options (``--executor`` .. ``--gpus-per-worker``), the same on every command;
    the command receives them as one ``executor`` keyword (:class:`ExecutorSettings` overrides, ``None`` unset)."""
    options = [
        click.option("--executor", "executor_kind", type=click.Choice(EXECUTORS), default=None,
                     help="Where tasks run: serial (default, this process), processes (local worker processes) or "
                          "ray (a Ray cluster; pip install 'lowprob[ray]')."),
        click.option("--workers", type=click.IntRange(1, 4096), default=None,
                     help="Workers (default: CPUs / --cpus-per-worker; on Ray, the cluster's CPUs)."),
        click.option("--address", default=None,
                     help="Ray cluster: 'auto' (the one `ray start` runs here), 'ray://host:10001', or none for a "
                          "local cluster."),
        click.option("--cpus-per-worker", type=click.IntRange(1, 1024), default=None,
                     help="CPUs (torch threads) of each worker [default: 1]."),
        click.option("--gpus-per-worker", type=click.FloatRange(0, 64), default=None,
                     help="GPUs of each worker; its tasks then run on cuda [default: 0]."),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, executor_kind: str | None, workers: int | None, address: str | None,
                cpus_per_worker: int | None, gpus_per_worker: float | None, **kwargs: Any) -> Any:
        overrides = {"executor": executor_kind, "workers": workers, "address": address,
                     "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker}
        return command(*args, executor=overrides, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper

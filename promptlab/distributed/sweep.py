"""Sweeps and demonstration searches on Ray workers (extra ``[ray]``): ``promptlab sweep --ray`` and
``promptlab search-demos --ray``.

`RayWorkers` is the `promptlab.experiments.workers.Workers` that runs an experiment's jobs (a sweep's
forward passes, a search's candidates) on a pool of Ray actors, one per worker. An actor keeps the backend
it loaded and is given the jobs of that model and dtype first, so a model is loaded once per worker, not
once per job. Actors return the finished rows; the driver alone writes them to the results file (and holds
its lock). A job whose worker dies (out of memory, a lost node, `ray.kill`) goes back to the queue and
runs on a fresh worker: its rows were never written, so every row is written exactly once.
"""

from __future__ import annotations

import gc
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from promptlab.distributed.ray import _import_ray, actor_resources, connect
from promptlab.errors import PromptlabError
from promptlab.experiments.workers import Job

MAX_DEATHS_PER_JOB = 3  # a job that ends this many workers (e.g. out of memory) stops the run


class _Worker:
    """A Ray actor: runs jobs, keeping the last backend it loaded (one model in memory at a time)."""

    def __init__(self, load: Callable[[str, str], Any]):
        self.load = load
        self.group: tuple[str, str] | None = None
        self.backend = None

    def run(self, group: tuple[str, str], work: Callable[[Any, Any], Any], item: Any) -> Any:
        if group != self.group:
            self.group, self.backend = None, None
            gc.collect()  # free the old model before loading the next
            self.backend = self.load(*group)
            self.group = group
        return work(self.backend, item)


class RayWorkers:
    """Run jobs on ``workers`` Ray actors (default: as many as the cluster fits: one per GPU where it has
    GPUs, else one per CPU) of the cluster at ``address`` (``None``/``local``: a Ray started here for the
    run; ``host:port``, ``ray://host:port``, ``auto``). Ray starts only when there are jobs to run."""

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        *,
        cpus_per_worker: float | None = None,
        gpus_per_worker: float | None = None,
    ):
        if workers is not None and workers < 1:
            raise PromptlabError(f"--ray-workers {workers}: give at least one worker.")
        self.address, self.workers = address, workers
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker

    def run(
        self,
        jobs: Sequence[Job],
        work: Callable[[Any, Any], Any],
        load: Callable[[str, str], Any],
        log: Callable[[str], None],
    ) -> Iterator[tuple[int, Any]]:
        ray = _import_ray()
        started = connect(self.address)
        actors: dict[int, Any] = {}
        try:
            count, cpus, gpus = actor_resources(self.workers, self.cpus, self.gpus)
            actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus)(_Worker)
            yield from _schedule(ray, jobs, work, load, log, actor_class, actors, count)
        finally:
            for actor in actors.values():
                ray.kill(actor)
            if started:
                ray.shutdown()


def _schedule(ray, jobs, work, load, log, actor_class, actors: dict[int, Any], wanted: int):
    """Hand jobs to idle actors, preferring the model each already holds; yield results as they arrive."""
    queue = deque(range(len(jobs)))
    held: dict[int, tuple[str, str] | None] = {}  # actor id -> the group it holds (or is loading)
    running: dict[Any, tuple[int, int]] = {}  # object ref -> (actor id, job index)
    deaths: dict[int, int] = {}
    idle: list[int] = []
    next_id = 0
    run = uuid.uuid4().hex[:8]

    def start_actor() -> None:
        nonlocal next_id  # named, so `ray list actors` shows what each is for
        actors[next_id] = actor_class.options(name=f"promptlab-worker-{run}-{next_id}").remote(load)
        held[next_id] = None
        idle.append(next_id)
        next_id += 1

    def pick(actor: int) -> int:
        """The next job for ``actor``: one of the model it holds, else of a model no actor holds."""
        for want in (lambda g: g == held[actor], lambda g: g not in held.values(), lambda g: True):
            for index in queue:
                if want(jobs[index][0]):
                    queue.remove(index)
                    return index
        raise AssertionError("pick from an empty queue")

    def submit() -> None:
        while idle and queue:
            actor = idle.pop()
            index = pick(actor)
            group, item = jobs[index]
            held[actor] = group
            running[actors[actor].run.remote(group, work, item)] = (actor, index)

    for _ in range(min(wanted, len(jobs))):
        start_actor()
    log(f"  {len(actors)} Ray worker(s) for {len(jobs)} job(s)")
    while queue or running:
        submit()
        (ref,), _ = ray.wait(list(running), num_returns=1)
        actor, index = running.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            deaths[index] = deaths.get(index, 0) + 1
            model, dtype = jobs[index][0]
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
            if deaths[index] >= MAX_DEATHS_PER_JOB:
                raise PromptlabError(
                    f"a job of {model} ({dtype}) ended {deaths[index]} Ray workers ({reason}); give each worker "
                    "more memory (fewer --ray-workers per node), or look in the Ray logs (/tmp/ray/session_latest)."
                ) from None
            log(f"  a Ray worker died running a job of {model} ({dtype}): {reason}; running it again")
            ray.kill(actors.pop(actor))
            del held[actor]
            queue.appendleft(index)
            start_actor()
            continue
        except ray.exceptions.RayTaskError as err:  # the job itself failed: a user error stays one line
            if isinstance(err.cause, PromptlabError):
                raise err.cause from None
            raise
        idle.append(actor)
        submit()  # keep the workers busy while the driver writes this job's rows
        yield index, result

"""Where an experiment's jobs run: here, one after another (`Here`), or on Ray workers
(`promptlab.distributed.sweep.RayWorkers`, extra ``[ray]``).

A job is ``(group, item)``: ``group`` is the ``(model, dtype)`` whose loaded backend it needs, ``item``
what `work(backend, item)` scores. Workers return what `work` returns, the finished rows, and the driver
(`run_sweep`, `run_search`) writes them to its results file, so both places run the same job and row code
and only the driver touches the output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

Job = tuple[tuple[str, str], Any]  # ((model, dtype), item)


class Workers(Protocol):
    def run(
        self,
        jobs: Sequence[Job],
        work: Callable[[Any, Any], Any],
        load: Callable[[str, str], Any],
        log: Callable[[str], None],
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(index into jobs, work(backend, item))`` once for every job, in any order.

        ``load(model, dtype)`` builds a backend; a worker loads each group it runs once and keeps one
        model in memory at a time. ``work`` and ``load`` travel to remote workers: they must pickle.
        """
        ...


class Here:
    """Jobs in this process, in their order; a backend is loaded when the group changes."""

    def run(self, jobs, work, load, log) -> Iterator[tuple[int, Any]]:
        backends: dict[tuple[str, str], Any] = {}
        for index, (group, item) in enumerate(jobs):
            if group not in backends:
                backends.clear()  # one model in memory at a time
                backends[group] = load(*group)
            yield index, work(backends[group], item)


def load_transformers(model: str, dtype: str):
    """The default loader of sweeps and searches: the transformers backend of ``model`` in ``dtype``."""
    from promptlab.backends import load_backend

    return load_backend("transformers", model, dtype=dtype)

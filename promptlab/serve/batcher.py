"""Requests that arrive together are embedded together: a short collection window, then one `encode`.

Every request's texts go into a queue. A collector takes the first waiting request, keeps collecting for
``window`` seconds (or until ``max_batch`` inputs), and hands the lot to a single worker thread, which
counts tokens, embeds all texts in one `Embedder.encode` call (deduplicated, length-sorted batching) and
splits the vectors back. While it runs, new requests queue up and form the next batch, so throughput
grows with the number of concurrent clients. The embedder is only ever touched by that one thread.

A request whose client went away (its future cancelled) is dropped before embedding; it never holds up
the others. An input that cannot be embedded fails only its own request.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from promptlab.errors import PromptlabError
from promptlab.serve.protocol import ApiError


@dataclass
class Job:
    texts: list[str]
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # float32 [N, H], as `Embedder.encode` returns them
    tokens: int  # prompt tokens (template included) over the request's inputs


def prompt_tokens(embedder, text: str) -> tuple[int, bool]:
    """(tokens of the prompt built for ``text``, whether it was cut to fit); an ensemble sums its members."""
    parts = embedder.members or [embedder]
    encoded = [member.prompts.encode(text) for member in parts]
    return sum(len(e.ids) for e in encoded), any(e.truncated for e in encoded)


class Batcher:
    """Collects concurrent requests into shared `encode` calls on one worker thread."""

    def __init__(
        self,
        embedder,
        *,
        window: float = 0.005,
        max_batch: int = 512,
        truncate: bool = True,
        metrics: Any = None,
    ):
        self.embedder = embedder
        self.window = window
        self.max_batch = max_batch
        self.truncate = truncate
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptlab-encode")
        self.queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect(), name="promptlab-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def embed(self, texts: list[str]) -> Embedded:
        """The vectors of ``texts`` (one request), embedded with whatever else arrives meanwhile."""
        if self.queue is None:
            raise RuntimeError("Batcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Job(texts, future))
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.queue is not None
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].texts)
            deadline = loop.time() + self.window
            while size < self.max_batch:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                jobs.append(job)
                size += len(job.texts)
            jobs = [job for job in jobs if not job.future.done()]  # cancelled: the client went away
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self._run, jobs)
            except Exception as err:  # a bug in embedding: fail these requests, keep serving
                results = [err] * len(jobs)
            for job, result in zip(jobs, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _run(self, jobs: list[Job]) -> list[Embedded | Exception]:
        """On the worker thread: count tokens, embed every job's texts in one call, split the vectors."""
        results: list[Embedded | Exception | None] = [None] * len(jobs)
        texts: list[str] = []
        spans = []
        cut = 0
        for k, job in enumerate(jobs):
            try:
                tokens, truncated = self._count(job.texts)
            except (ApiError, PromptlabError) as err:
                results[k] = err if isinstance(err, ApiError) else ApiError(400, str(err))
                continue
            spans.append((k, len(texts), len(texts) + len(job.texts), tokens))
            texts += job.texts
            cut += truncated
        if texts:
            start = time.perf_counter()
            with warnings.catch_warnings():
                # Cut inputs are counted in the metrics (promptlab_truncated_inputs), not warned about per batch.
                warnings.filterwarnings(
                    "ignore", message=r".*shortened inside the template", category=UserWarning
                )
                vectors = self.embedder.encode(texts, show_progress_bar=False)
            if self.metrics is not None:
                self.metrics.observe_batch(len(texts), time.perf_counter() - start, truncated=cut)
            for k, a, b, tokens in spans:
                results[k] = Embedded(vectors[a:b], tokens)
        return results  # type: ignore[return-value]

    def _count(self, texts: list[str]) -> tuple[int, int]:
        """(prompt tokens over ``texts``, how many were cut to fit); 400 for a cut one without truncation."""
        total = cut = 0
        for i, text in enumerate(texts):
            tokens, truncated = prompt_tokens(self.embedder, text)
            if truncated and not self.truncate:
                raise ApiError(
                    400,
                    f"input[{i}] does not fit in {self.embedder.prompts.max_length} tokens with the template; "
                    "shorten it (this server does not truncate).",
                    param="input",
                    code="input_too_long",
                )
            total += tokens
            cut += truncated
        return total, cut

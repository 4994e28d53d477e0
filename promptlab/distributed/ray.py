"""Embedding with a pool of Ray actors (Ray Data), each loading the embedder once (extra ``[ray]``).

`EmbedBatch` is a Ray Data callable class for a user's own pipeline::

    import ray
    from promptlab.distributed.ray import EmbedBatch

    ds = ray.data.read_text("corpus/*.txt")  # rows {"text": ...}
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"embedder": "/models/my-embedder"},  # or {"model": ..., "template": ...}
        batch_size=1024,
        concurrency=2,  # two actors
        num_gpus=1,  # per actor, where the cluster has GPUs
    )
    ds.write_parquet("vectors/")  # rows {"text": ..., "embedding": float32 [H]}

`embed_shards_ray` is what ``promptlab embed --ray`` runs: the shards of `promptlab.distributed.shards`
(the same files, manifest and resumption as a local job), each computed and written by one actor, so the
output folder must be on a filesystem every node shares (as for Ray Data's own writers).
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from promptlab.distributed.shards import (
    DEFAULT_SHARD_SIZE,
    Shard,
    ShardedResult,
    ShardFolder,
    check_shard_size,
    make_embedder,
    write_shard_files,
)
from promptlab.errors import PromptlabError

CONNECT_TIMEOUT = 10.0  # seconds to reach a Ray cluster's address before giving up


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise PromptlabError(
            "Ray is not installed; install the extra: pip install 'promptlab[ray]' (ray[data])."
        ) from None
    return ray


class EmbedBatch:
    """A Ray Data callable class: adds the vectors of ``text_column`` as ``output_column`` to each batch.

    The embedder is loaded once per actor: give ``embedder`` (a saved embedder folder, see
    `promptlab.artifact`, reachable from every node) or the arguments of `Embedder` (``model``,
    ``template``, ``layer``, ``dtype``, ``device``...). Batches may be dicts of NumPy arrays (Ray Data's
    default) or pandas DataFrames; vectors are float32 [n, H] (L2-normalised with ``normalize=True``).
    """

    def __init__(
        self,
        embedder: str | None = None,
        *,
        text_column: str = "text",
        output_column: str = "embedding",
        normalize: bool = False,
        **options: Any,
    ):
        self.embedder = make_embedder({"embedder": embedder, **options} if embedder else options)
        self.text_column, self.output_column, self.normalize = text_column, output_column, normalize

    def __call__(self, batch):
        if self.text_column not in batch:
            raise PromptlabError(
                f"the batch has no column {self.text_column!r} (columns: {', '.join(map(str, batch))}); "
                "pass text_column= in fn_constructor_kwargs."
            )
        texts = [str(t) for t in batch[self.text_column]]
        vectors = self.embedder.encode(texts, normalize_embeddings=self.normalize, show_progress_bar=False)
        if isinstance(batch, dict):
            return {**batch, self.output_column: vectors}
        batch = batch.copy()  # a pandas DataFrame: one array per row
        batch[self.output_column] = list(vectors)
        return batch


# -- the cluster ------------------------------------------------------------------------------------------
def check_address(address: str | None, timeout: float | None = None) -> None:
    """Fail in about ``timeout`` seconds, in one line, when no Ray cluster answers at ``address``
    (``host:port`` of a head node, or ``ray://host:port`` of a Ray Client server; ``None``, ``local`` and
    ``auto`` are not checked). ``ray.init`` itself retries an unanswered address for a long time."""
    if address in (None, "local", "auto"):
        return
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    if parts.hostname is None or parts.port is None:
        raise PromptlabError(
            f"Ray address {address!r} is not host:port (or ray://host:port, auto); e.g. --ray 10.0.0.5:6379."
        )
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            pass
    except OSError as err:
        raise PromptlabError(
            f"cannot reach a Ray cluster at {address} within {timeout:g} s ({err.strerror or err}); start one "
            "there (ray start --head) or pass its head's address to --ray."
        ) from None
    if parts.scheme != "gcs":
        return  # a Ray Client server: the port answers; ray.init speaks its protocol
    _import_ray()
    try:  # one request to the cluster's control store (GCS), bounded by the timeout
        from ray._raylet import InnerGcsClient

        probe = InnerGcsClient.standalone
    except (ImportError, AttributeError):  # another Ray version: the port check above has to do
        return
    try:
        probe(f"{parts.hostname}:{parts.port}", None, int(timeout * 1000))
    except Exception as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise PromptlabError(
            f"cannot reach a Ray cluster at {address} within {timeout:g} s (the port answers, but not as a Ray "
            f"head: {reason}); pass the head's GCS address (ray status prints it) to --ray."
        ) from None


def connect(address: str | None = None, *, timeout: float | None = None) -> bool:
    """Join the Ray cluster at ``address`` (``host:port``, ``ray://host:port`` or ``auto``), or start a local
    one (``None`` / ``local``); a Ray already initialised in this process is used as it is. Returns whether
    this call started Ray (and so should shut it down)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
    if address not in (None, "local"):
        check_address(address, timeout)
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        raise PromptlabError(
            f"cannot join the Ray cluster at {address} ({str(err).splitlines()[0]}); check --ray's address."
        ) from None
    return True


def actor_resources(
    actors: int | None, cpus_per_actor: float | None, gpus_per_actor: float | None
) -> tuple[int, float, float]:
    """(actors, CPUs, GPUs per actor) from what the user asked and what the cluster offers: a GPU per actor
    where the cluster has GPUs, else one CPU per actor; by default as many actors as fit."""
    import ray

    offered = ray.cluster_resources()
    gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if offered.get("GPU", 0) >= 1 else 0.0)
    cpus = cpus_per_actor if cpus_per_actor is not None else 1.0
    if actors is None:
        fit = offered.get("GPU", 0) / gpus if gpus else offered.get("CPU", 1) / cpus
        actors = max(1, int(fit))
    if actors < 1:
        raise PromptlabError(f"--ray-actors {actors}: give at least one actor.")
    return actors, cpus, gpus


# -- the sharded job --------------------------------------------------------------------------------------
class EmbedShard:
    """A Ray Data callable class for ``promptlab embed --ray``: each batch is one shard (one block of the
    job's dataset), which the actor embeds and writes into ``shards`` itself, returning one row of facts
    about it. Writing where the vectors are computed is what bounds a killed job's loss to the shard each
    actor was embedding: nothing finished waits in a queue for the driver."""

    def __init__(self, shards: str, *, normalize: bool = False, **options: Any):
        self.embedder = make_embedder(options)
        self.shards, self.normalize = Path(shards), normalize

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = []
        for index in np.unique(batch["shard"]).tolist():
            rows = batch["shard"] == index
            name = str(batch["name"][rows][0])
            if int(rows.sum()) != int(batch["rows"][rows][0]):  # Ray Data split or merged the shard's block
                raise RuntimeError(f"shard {name} reached an actor in pieces; rerun the job to resume it.")
            texts = [str(t) for t in batch["text"][rows]]
            vectors = self.embedder.encode(
                texts, normalize_embeddings=self.normalize, show_progress_bar=False
            )
            write_shard_files(self.shards, name, batch["line"][rows].tolist(), vectors)
            done.append((index, vectors.shape[1]))
        return {"shard": np.array([i for i, _ in done]), "dim": np.array([d for _, d in done])}


def embed_shards_ray(
    options: dict[str, Any],
    out: ShardFolder,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    field: str = "text",
    normalize: bool = False,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float | None = None,
    on_shard: Callable[[Shard], None] | None = None,
) -> ShardedResult:
    """Embed the shards not yet in ``out`` on the connected Ray cluster (see `connect`) with a pool of
    `EmbedShard` actors built from ``options`` (as `make_embedder` takes them). The actors write the shards
    (so ``out`` must lie on a filesystem every node shares, as for Ray Data's own writers); the driver
    records each in the manifest as it is reported, and a killed job keeps every shard written."""
    ray = _import_ray()
    import pyarrow as pa

    check_shard_size(shard_size)
    skipped = len(out.records)
    pending = list(out.plan(shard_size, field))
    start = time.perf_counter()
    if not pending:
        out.save_manifest()
        return ShardedResult(out.folder, 0, skipped, 0, 0.0, dict(out.failed))
    actors, cpus, gpus = actor_resources(actors, cpus_per_actor, gpus_per_actor)
    actors = min(actors, len(pending))  # an actor with no shard to embed would only load the model
    options = dict(options)
    if gpus and not options.get("device"):
        options["device"] = "cuda"
    tables = [  # one table, hence one block and one batch (batch_size=None), per shard
        pa.table(
            {
                "shard": pa.array([i] * len(s.lines), pa.int64()),
                "name": pa.array([s.name] * len(s.lines), pa.string()),
                "rows": pa.array([len(s.lines)] * len(s.lines), pa.int64()),
                "line": pa.array(s.lines, pa.int64()),
                "text": pa.array(s.sentences, pa.string()),
            }
        )
        for i, s in enumerate(pending)
    ]
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = sys.stderr.isatty()
    ds = ray.data.from_arrow(tables).map_batches(
        EmbedShard,
        fn_constructor_kwargs={"shards": str(out.shards.resolve()), "normalize": normalize, **options},
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus,
    )
    written = sentences = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for index, dim in zip(batch["shard"].tolist(), batch["dim"].tolist(), strict=True):
            shard = pending[index]
            out.mark_written(shard, int(dim))
            written += 1
            sentences += len(shard.lines)
            if on_shard is not None:
                on_shard(shard)
    out.save_manifest()
    return ShardedResult(
        out.folder, written, skipped, sentences, time.perf_counter() - start, dict(out.failed)
    )

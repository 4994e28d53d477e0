"""Run any promptlab encoder on MTEB (Muennighoff et al., 2023) tasks, through mteb 2.x's encoder protocol.

    import mteb
    from promptlab.evaluation.mteb_adapter import mteb_encoder

    model = mteb_encoder(embedder)                      # an Embedder, or any encode(list[str]) -> array
    results = mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark"]), cache=None)

The adapter only encodes: MTEB reads the texts of each batch (the ``text`` field of mteb's batches), the
encoder returns one vector per text, and MTEB scores with cosine similarity, as promptlab does. Prompts
come from the embedder's own template; MTEB's per-task instructions are not added. Needs the ``[mteb]``
extra (``pip install 'promptlab[mteb]'``); MTEB downloads its task data from the Hugging Face Hub.
`load_mteb_tasks` (names checked, data loaded before a model is) and `run_mteb` are what ``promptlab mteb``
runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from promptlab.errors import PromptlabError

_MISSING = "the MTEB adapter needs the mteb package (2.x): pip install 'promptlab[mteb]'."


def _mteb():
    try:
        import mteb
    except ImportError:
        raise PromptlabError(_MISSING) from None
    return mteb


def _require_mteb():
    try:
        import mteb  # noqa: F401
        from mteb.models.abs_encoder import AbsEncoder
        from mteb.models.model_meta import ModelMeta, ScoringFunction
    except ImportError:
        raise PromptlabError(_MISSING) from None
    return AbsEncoder, ModelMeta, ScoringFunction


def mteb_encoder(model: Any, *, name: str | None = None, revision: str | None = None):
    """An mteb ``EncoderProtocol`` model around ``model``: an `Embedder` (its ``encode``) or a callable
    ``encode(list[str]) -> (n, d) array``. ``name``/``revision`` label MTEB's results (default: the
    embedder's model, template and layer, and its weights' sha256 where known)."""
    AbsEncoder, ModelMeta, ScoringFunction = _require_mteb()
    if hasattr(model, "encode"):
        encode: Callable[[list[str]], np.ndarray] = model.encode
        described = model.describe() if hasattr(model, "describe") else {}
    elif callable(model):
        encode, described = model, {}
    else:
        raise PromptlabError(
            f"mteb_encoder needs an Embedder or an encode(list[str]) function, not {type(model).__name__}."
        )
    label = name or _label(described)
    meta = ModelMeta.create_empty(
        {
            "name": label,
            "revision": revision or (described.get("model_file_sha256") or "")[:12] or None,
            "similarity_fn_name": ScoringFunction.COSINE,
            "framework": ["PyTorch"],
        }
    )

    class PromptlabEncoder(AbsEncoder):
        """Encodes each batch's texts with promptlab; MTEB computes cosine similarities."""

        def __init__(self) -> None:
            self.model = None  # similarity comes from the metadata (cosine), not from a model object
            self.mteb_model_meta = meta

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [text for batch in inputs for text in batch["text"]]
            vectors = np.asarray(encode(texts), dtype=np.float32)
            if vectors.shape[0] != len(texts):
                raise PromptlabError(
                    f"the encoder returned {vectors.shape[0]} vectors for {len(texts)} texts; return one each."
                )
            return vectors

    return PromptlabEncoder()


def _label(described: dict) -> str:
    """ "promptlab/<model>" plus template and layer, as MTEB names a model in its results."""
    if not described:
        return "promptlab/encoder"
    model = str(described.get("model", "model")).replace("/", "__")
    parts = [model, str(described.get("template", "")), f"layer{described.get('layer', '')}"]
    return "promptlab/" + "-".join(p for p in parts if p)


def load_mteb_tasks(names: Sequence[str]) -> list:
    """MTEB's tasks by name, with their data loaded: everything a run checks before a model loads.

    An unknown name gets mteb's closest names. The data comes from the Hugging Face Hub (or the
    ``datasets`` cache); unreachable, that is one error naming the fix."""
    mteb = _mteb()
    if not names:
        raise PromptlabError("no MTEB tasks given; name them, e.g. --tasks STSBenchmark,SICK-R.")
    tasks = []
    for name in dict.fromkeys(names):
        try:
            tasks.append(mteb.get_task(name))
        except KeyError as err:
            found = str(err.args[0] if err.args else err).removeprefix("KeyError: ")
            raise PromptlabError(f"unknown MTEB task: {found}") from None
    for task in tasks:
        try:
            task.load_data()
        except OSError as err:  # ConnectionError, offline mode, a dataset missing from the cache
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise PromptlabError(
                f"MTEB task {task.metadata.name} reads its data ({task.metadata.dataset.get('path')}) from "
                f"the Hugging Face Hub, which is out of reach ({reason}); run with internet access and "
                "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE unset, or score the local SentEval copies with "
                "`promptlab eval`."
            ) from None
    return tasks


def run_mteb(model, tasks: Sequence, *, output_dir: str | Path | None = None, progress: bool = False):
    """Score an mteb model (`mteb_encoder`) on loaded tasks (`load_mteb_tasks`) with mteb's own scorers.

    Returns [(task name, main metric, main score x 100)]. With ``output_dir`` mteb writes its result
    files there (``results/<model>/<revision>/<task>.json``), and a rerun scores only what is missing."""
    mteb = _mteb()
    cache = mteb.ResultCache(output_dir) if output_dir is not None else None
    results = mteb.evaluate(model, list(tasks), cache=cache, show_progress_bar=progress)
    main = {task.metadata.name: task.metadata.main_score for task in tasks}
    return [(r.task_name, main[r.task_name], 100 * r.get_score()) for r in results.task_results]

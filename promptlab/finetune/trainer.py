"""The CSE training loop: LoRA on a prompt embedding, a dev score every K steps, best adapter kept, resumable.

Output folder::

    finetune.json        the full config, the data report, the base model's identity, versions
    log.jsonl            append-only: start / resume / eval (step, loss, dev score, lr, time) / end
    best/                the adapter with the best dev score on `select_on` (+ promptlab_adapter.json)
    checkpoint-last/     the latest adapter + trainer_state.pt (optimizer, scheduler, RNG states, step)

Resuming restores the adapter, the optimizer and scheduler state and every RNG, and the data order is a
pure function of (seed, epoch), so a resumed run ends exactly where an uninterrupted one does.

``trainer_state.pt`` holds tensors and plain data only (numbers, strings, lists, dicts) and is read with
``torch.load(weights_only=True)``: a file that holds any other object is refused, never unpickled, so a
crafted checkpoint cannot run code on ``--resume``.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptlab.adapters import base_identity
from promptlab.demonstrations import resolve_demonstration
from promptlab.errors import PromptlabError
from promptlab.finetune.config import FinetuneConfig
from promptlab.finetune.data import Example, TrainingData, build_training_data
from promptlab.finetune.lora import (
    adapter_weights,
    add_lora,
    blocks_below,
    recompute_activations,
    save_adapter,
    scoring_mode,
)
from promptlab.finetune.objectives import Objective

STATE = "trainer_state.pt"
CHECKPOINT = "checkpoint-last"  # the folder a run resumes from: local state, never committed
STATE_FORMAT = 3  # trainer_state.pt layout: tensors and plain data only


@dataclass
class TrainResult:
    output_dir: Path
    steps: int  # optimizer steps done in total
    best_step: int | None
    best_dev: float | None
    stopped: str  # "completed" | "time_limit"
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    peak_rss_mib: float = 0.0


def peak_rss_mib() -> float:
    """The process's peak resident set size (``getrusage`` ``ru_maxrss``, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _has_model_dropout(model: torch.nn.Module) -> bool:
    """Dropout in the model itself (LoRA's own dropout is zero noise at init: B = 0)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0 and "lora_dropout" not in name:
            return True
    config = getattr(model, "config", None)
    return any(
        isinstance(getattr(config, k, None), float) and getattr(config, k) > 0
        for k in ("attention_dropout", "attention_probs_dropout_prob", "hidden_dropout_prob", "dropout")
    )


def _numpy_rng_state() -> dict[str, Any]:
    """NumPy's global RNG state with its key as a tensor, so the checkpoint holds no NumPy objects."""
    state = np.random.get_state(legacy=False)
    key = torch.from_numpy(state["state"]["key"].astype(np.int64))
    return {**state, "state": {**state["state"], "key": key}}


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    key = state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**state, "state": {**state["state"], "key": key}})


def _cuda_rng_states() -> list[torch.Tensor]:
    """Every GPU's RNG state (dropout on a GPU draws from it, not from the CPU's); [] where none is in use."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return []
    return torch.cuda.get_rng_state_all()


def _set_cuda_rng_states(states: list[torch.Tensor]) -> None:
    if states and torch.cuda.is_available():
        count = min(len(states), torch.cuda.device_count())  # a machine with fewer GPUs resumes those it has
        for index in range(count):
            torch.cuda.set_rng_state(states[index], index)


_STATE_KEYS = {"format", "step", "adapter", "optimizer", "scheduler", "torch_rng", "python_rng",
               "numpy_rng", "best_dev", "best_step", "history", "loss_window", "cuda_rng"}  # fmt: skip
# Format 2 has no GPU RNG states: it still resumes, exactly so for a run on a CPU.
_STATE_KEYS_BY_FORMAT = {STATE_FORMAT: _STATE_KEYS, 2: _STATE_KEYS - {"cuda_rng"}}


def _read_state(path: Path) -> dict[str, Any]:
    """``trainer_state.pt`` read without unpickling any object (tensors and plain data only)."""
    refuse = (
        f"cannot resume from {path}: it is not a trainer state this promptlab version reads (damaged, "
        "written by an older version, or holding objects other than tensors and plain data, which are "
        "refused, never unpickled); start afresh with --overwrite, or use another output_dir."
    )
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # refused objects (pickle.UnpicklingError), a damaged zip, a truncated file
        raise PromptlabError(refuse) from err
    layout = state.get("format") if isinstance(state, dict) else None
    if type(layout) is not int or set(state) != _STATE_KEYS_BY_FORMAT.get(layout):
        raise PromptlabError(refuse)
    return {"cuda_rng": [], **state}


def _append(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")


class Trainer:
    """One fine-tuning run; ``backend`` may be given (tests, notebooks), else it is loaded from config.

    ``parallel`` (a `promptlab.distributed.ddp.DataParallel`, as under ``torchrun``) splits each batch over
    ranks with the same loss and gradient as one process; only rank 0 writes files.
    """

    def __init__(
        self, config: FinetuneConfig, *, backend=None, data: TrainingData | None = None, parallel=None
    ):
        from promptlab.embedder import Embedder

        self.config = config
        self.parallel = parallel
        self.is_main = parallel is None or parallel.is_main
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.data = data or build_training_data(
            config.data,
            objective=config.objective,
            data_dir=config.data_dir,
            min_score=config.min_score,
            holdout=config.holdout,
            max_examples=config.max_examples,
            seed=config.seed,
        )
        if len(self.data) < 2:
            raise PromptlabError(
                f"only {len(self.data)} training example(s); in-batch negatives need at least 2."
            )
        from promptlab.evaluation.selection import load_selection_task

        # The dev data is read before the model loads, so a missing file fails in a second.
        self._dev = load_selection_task(
            config.select_on, config.data_dir, n_pairs=config.dev_pairs, seed=config.dev_seed
        )
        if parallel is not None:  # before the model loads
            parallel.check_batch_size(min(config.batch_size, len(self.data)))
        # Read before the model loads too: a search file without candidates fails in a second.
        self.demonstration = resolve_demonstration(config.demonstration)
        if self.demonstration is not None and self.demonstration.eval_overlap and config.holdout != "none":
            warnings.warn(
                f"demonstration {self.demonstration.id!r} is a sentence of {self.demonstration.eval_overlap}, "
                f"and every training prompt carries it past the holdout ({config.holdout!r}); choose one "
                "from a search pool (best-of:SEARCH.jsonl) to keep evaluation sentences out of training.",
                stacklevel=2,
            )
        if backend is None:
            from promptlab.backends import load_backend

            quantization = None if config.quantization == "none" else config.quantization
            backend = load_backend(
                "transformers", config.model, dtype=config.dtype, quantization=quantization
            )
        else:
            from promptlab.backends import Request, check_request

            check_request(backend, Request(gradients=True, adapter=True))  # LoRA trains through the adapter
        self.backend = backend
        # The views are `Embedder`s: the same tokenization, padding, layer and pooling as evaluation.
        view = partial(
            Embedder,
            backend,
            layer=config.layer,
            max_length=config.max_length,
            demonstration=self.demonstration,
        )
        self.view = view(config.template)
        self.view2 = view(config.template2) if config.template2 else None
        if self.view2 is not None and self.view2.template.pooling != self.view.template.pooling:
            raise PromptlabError(
                f"templates {self.view.template.name!r} and {self.view2.template.name!r} are read out "
                f"differently ({self.view.template.pooling} vs {self.view2.template.pooling}); "
                "use two templates of one kind."
            )
        self.base = base_identity(backend)  # before LoRA: what the adapter must be loaded onto
        torch.manual_seed(config.seed)  # LoRA's A init
        self.peft_model = add_lora(
            backend,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.target_modules,
            quantized=config.quantization != "none",
            blocks=blocks_below(self.view.layer_index, backend.num_layers, config.lora_layers),
        )
        self.model = backend.model
        if config.gradient_checkpointing:
            recompute_activations(self.model)
        if config.objective == "dropout" and not _has_model_dropout(self.model):
            raise PromptlabError(
                "objective 'dropout' uses the model's dropout noise as the two views, but this model has no "
                "dropout; use objective 'two_template' (or 'supervised' with pairs)."
            )
        self.objective = Objective(
            config.objective, self.view, config.temperature, self.view2, config.denoise, parallel
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if parallel is not None:
            parallel.broadcast_parameters(self.params)  # every rank starts from rank 0's adapter
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        n = len(self.data)
        self.batch_size = min(config.batch_size, n)
        self.steps_per_epoch = max(1, n // self.batch_size)
        self.total_steps = config.steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.out = Path(config.output_dir)
        self.step = 0
        self.best_dev: float | None = None
        self.best_step: int | None = None
        self.history: list[dict] = []
        self.loss_window: list[float] = []

    # -- schedule and data order ---------------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        warmup = self.config.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        if self.config.schedule == "constant":
            return 1.0
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))

    def batch(self, step: int) -> list[Example]:
        """The examples of optimizer step ``step``: a pure function of (seed, epoch), so resuming is exact."""
        epoch, index = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.data), generator=generator).tolist()
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        return [self.data.examples[i] for i in rows]

    # -- dev score -----------------------------------------------------------------------------------------
    def dev_score(self) -> float:
        """The main score x 100 of `select_on`'s dev split (STS-B: Spearman on a seeded subset), through
        the `Embedder` itself."""
        from promptlab.evaluation.selection import score_task

        self.backend.clear_caches()  # a prefix KV cache from the last dev score is stale now
        with scoring_mode(self.model):  # eval mode, 4-bit layers kept trainable
            return score_task(self._dev, partial(self.view.encode, show_progress_bar=False))

    # -- saving --------------------------------------------------------------------------------------------
    def adapter_metadata(self, step: int, dev: float | None) -> dict[str, Any]:
        from promptlab.version import __version__

        t = self.view.template
        return {
            "base": self.base,
            "template": {"name": t.name, "kind": t.kind, "text": t.text, "pooling": t.pooling},
            "layer": self.config.layer,
            "demonstration": self.demonstration.to_dict() if self.demonstration else None,
            "step": step,
            "dev_spearman": dev,
            "dev_task": self._dev.name,
            "dev_pairs": self._dev.n_items,
            "config": self.config.to_dict(),
            "promptlab": __version__,
        }

    def _replace_dir(self, name: str, write: Callable[[Path], None]) -> None:
        """Write a folder next to its final place, then swap it in (an interruption leaves the old one)."""
        final, tmp, old = self.out / name, self.out / f".{name}.tmp", self.out / f".{name}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def save_checkpoint(self) -> None:
        def write(folder: Path) -> None:
            save_adapter(self.peft_model, folder, self.adapter_metadata(self.step, None))
            state = {
                "format": STATE_FORMAT,
                "step": self.step,
                "adapter": adapter_weights(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),  # (version, tuple of ints, float | None)
                "numpy_rng": _numpy_rng_state(),
                "cuda_rng": _cuda_rng_states(),
                "best_dev": self.best_dev,
                "best_step": self.best_step,
                "history": self.history,
                "loss_window": self.loss_window,
            }
            torch.save(state, folder / STATE)

        self._replace_dir(CHECKPOINT, write)

    def load_checkpoint(self) -> None:
        path = self.out / CHECKPOINT / STATE
        if not path.is_file():
            raise PromptlabError(
                f"nothing to resume: {path} does not exist; run without --resume to start afresh."
            )
        state = _read_state(path)
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        adapter = state["adapter"]
        if not isinstance(adapter, dict) or set(adapter) != set(params):
            raise PromptlabError(
                f"cannot resume from {path}: its adapter weights do not match this run's LoRA layers; "
                "start afresh with --overwrite, or use another output_dir."
            )
        with torch.no_grad():
            for name, tensor in adapter.items():
                params[name].copy_(tensor)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        _set_numpy_rng_state(state["numpy_rng"])
        _set_cuda_rng_states(state["cuda_rng"])
        self.step = state["step"]
        self.best_dev, self.best_step = state["best_dev"], state["best_step"]
        self.history, self.loss_window = state["history"], state["loss_window"]

    # -- the run -------------------------------------------------------------------------------------------
    def prepare_output(self, *, resume: bool, overwrite: bool) -> None:
        """Create (or check and resume) the output folder; data-parallel, rank 0 does it and every rank
        stops on its error, and the other ranks then read the checkpoint."""
        if self.parallel is None:
            return self._prepare_output(resume=resume, overwrite=overwrite)
        error = None
        if self.parallel.is_main:
            try:
                self._prepare_output(resume=resume, overwrite=overwrite)
            except PromptlabError as err:
                error = str(err)
        error = self.parallel.broadcast(error)
        if error is not None:
            raise PromptlabError(error)
        if resume and not self.parallel.is_main:
            self.load_checkpoint()

    def _prepare_output(self, *, resume: bool, overwrite: bool) -> None:
        from promptlab.version import __version__

        world_size = self.parallel.world if self.parallel is not None else 1

        record = self.out / "finetune.json"
        if resume:
            if not record.is_file():
                raise PromptlabError(
                    f"nothing to resume in {self.out} (no finetune.json); run without --resume."
                )
            saved = FinetuneConfig.from_dict(json.loads(record.read_text(encoding="utf-8"))["config"])
            changed = self.config.differences(saved)
            if changed:
                raise PromptlabError(
                    f"cannot resume {self.out}: the config changed ({'; '.join(changed)}); "
                    "restore it, or start a new run in another output_dir."
                )
            self.load_checkpoint()
            resumed = {"event": "resume", "step": self.step, "world_size": world_size, "time": time.time()}
            _append(self.out / "log.jsonl", resumed)
            return
        if self.out.exists() and any(self.out.iterdir()):
            if not overwrite:
                if record.is_file() and not (self.out / CHECKPOINT).is_dir():
                    # A run folder copied or committed without its (local) checkpoint: --resume cannot work.
                    raise PromptlabError(
                        f"{self.out} holds a run with no {CHECKPOINT}/ to resume from (its best/ adapter, if any, "
                        "can be evaluated as it is); pass --overwrite to train it again, or choose another "
                        "output_dir."
                    )
                raise PromptlabError(
                    f"{self.out} is not empty; pass --resume to continue that run, --overwrite to replace it "
                    "or choose another output_dir."
                )
            if not record.is_file():
                raise PromptlabError(
                    f"{self.out} does not look like a finetune run (no finetune.json); not deleting it."
                )
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        import peft
        import transformers

        info = {
            "config": self.config.to_dict(),
            "data": self.data.report,
            "base": self.base,
            "backend": self.backend.describe(),
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": world_size,  # ranks sharing each batch (torchrun); the batch is the same on any
            "trainable_parameters": sum(p.numel() for p in self.params),
            # Bytes of the frozen base weights as stored (a 4-bit layer packs two weights per byte).
            "base_weights_mib": sum(
                p.numel() * p.element_size() for p in self.model.parameters() if not p.requires_grad
            )
            / 2**20,
            "versions": {
                "promptlab": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
            "command": sys.argv,
        }
        (self.out / "finetune.json").write_text(
            json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8"
        )
        _append(self.out / "log.jsonl", {"event": "start", "time": time.time(), **info})

    def evaluate_and_log(self, elapsed: float) -> dict:
        dev = self.dev_score()
        loss = float(np.mean(self.loss_window)) if self.loss_window else None
        self.loss_window = []
        entry = {
            "event": "eval",
            "step": self.step,
            "loss": loss,
            "dev_spearman": dev,
            "lr": self.scheduler.get_last_lr()[0],
            "train_seconds": round(elapsed, 2),
        }
        if not math.isnan(dev) and (self.best_dev is None or dev > self.best_dev):  # NaN: constant vectors
            self.best_dev, self.best_step = dev, self.step
            self._replace_dir(
                "best", lambda f: save_adapter(self.peft_model, f, self.adapter_metadata(self.step, dev))
            )
            entry["best"] = True
        self.history.append(entry)
        _append(self.out / "log.jsonl", entry)
        return entry

    def run(
        self,
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> TrainResult:
        from tqdm.auto import tqdm

        self.prepare_output(resume=resume, overwrite=overwrite)
        if not resume:
            torch.manual_seed(self.config.seed)  # dropout noise
            random.seed(self.config.seed)
            np.random.seed(self.config.seed)
        cfg = self.config
        show = (sys.stderr.isatty() if progress is None else progress) and self.is_main
        log = partial(_append, self.out / "log.jsonl") if self.is_main else (lambda record: None)
        start_time = time.perf_counter()
        prior = self.history[-1]["train_seconds"] if self.history else 0.0
        stopped = "completed"
        self.model.train()
        with tqdm(
            total=self.total_steps, initial=self.step, desc="finetune", unit="step", disable=not show
        ) as bar:
            while self.step < self.total_steps:
                examples = self.batch(self.step)
                loss = self.objective.loss(examples)
                loss.backward()
                if self.parallel is not None:
                    self.parallel.sum_gradients(self.params)  # each rank's backward reached its own rows
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip or math.inf)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                loss_value = loss.item()
                self.loss_window.append(loss_value)
                step_entry = {
                    "event": "step",
                    "step": self.step,
                    "loss": loss_value,
                    "grad_norm": float(grad_norm),
                }
                log({**step_entry, "lr": self.scheduler.get_last_lr()[0]})
                elapsed = prior + time.perf_counter() - start_time
                last = self.step == self.total_steps
                out_of_time = cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60 and not last
                if self.parallel is not None and cfg.max_minutes is not None:
                    out_of_time = self.parallel.broadcast(out_of_time)  # every rank stops at one step
                postfix = {"loss": f"{loss_value:.3f}"}
                evaluate = last or out_of_time or (cfg.eval_every and self.step % cfg.eval_every == 0)
                if evaluate and self.is_main:
                    entry = self.evaluate_and_log(elapsed)
                    postfix["dev"] = f"{entry['dev_spearman']:.2f}"
                save = last or out_of_time or (cfg.save_every and self.step % cfg.save_every == 0)
                if save and self.is_main:
                    self.save_checkpoint()
                if self.best_dev is not None:
                    postfix["best"] = f"{self.best_dev:.2f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                if on_step is not None:
                    on_step(self.step, loss_value)
                if out_of_time:
                    stopped = "time_limit"
                    break
        elapsed = prior + time.perf_counter() - start_time
        result = TrainResult(
            self.out, self.step, self.best_step, self.best_dev, stopped, self.history, elapsed, peak_rss_mib()
        )
        log(
            {
                "event": "end",
                "stopped": stopped,
                "steps": self.step,
                "best_step": self.best_step,
                "best_dev_spearman": self.best_dev,
                "train_seconds": round(elapsed, 1),
                "peak_rss_mib": round(result.peak_rss_mib, 1),
                "peak_rss_how": "getrusage(RUSAGE_SELF).ru_maxrss: whole process, model loading included",
                "time": time.time(),
            },
        )
        return result


def train(
    config: FinetuneConfig,
    *,
    backend=None,
    resume: bool = False,
    overwrite: bool = False,
    parallel=None,
    **run_options,
):
    """Build a `Trainer` and run it; see `Trainer.run` for ``progress`` and ``on_step``, `Trainer` for
    ``parallel``."""
    return Trainer(config, backend=backend, parallel=parallel).run(
        resume=resume, overwrite=overwrite, **run_options
    )

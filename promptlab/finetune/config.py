"""`FinetuneConfig`: everything a CSE fine-tuning run depends on, validated on construction.

Shaped like peft's config dataclasses: each field carries its help text in ``metadata``, and
``__post_init__`` rejects a bad value with a message that says what to write instead. A run saves its
config beside the adapter (``finetune.json``), so every adapter can be reproduced from its own record.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptlab.config_types import check_type, read_toml
from promptlab.errors import PromptlabError, did_you_mean

OBJECTIVES = ("supervised", "dropout", "two_template")
HOLDOUTS = ("pairs", "sentences", "none")
QUANTIZATIONS = ("none", "nf4")
DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = ("constant", "linear")

# Changing these between an interrupted run and its resumption would make the resumed run a different one.
# gradient_checkpointing changes memory and time only: the gradients are the same.
RESUMABLE_CHANGES = ("steps", "epochs", "max_minutes", "num_threads", "output_dir", "gradient_checkpointing")


@dataclass
class FinetuneConfig:
    """One contrastive fine-tuning run (SimCSE / PromptBERT / PromptEOL-CSE) of a prompt embedding."""

    model: str = field(
        metadata={"help": "model spec: packaged name (smollm2-135m), local dir, .gguf or hub id"}
    )
    output_dir: str = field(metadata={"help": "folder for checkpoints, the best adapter and the log"})
    template: str = field(
        default="prompteol", metadata={"help": "the template trained (and later evaluated)"}
    )
    template2: str | None = field(
        default=None, metadata={"help": "second view's template, for objective 'two_template' (PromptBERT)"}
    )
    demonstration: str | None = field(
        default=None,
        metadata={
            "help": "a demonstration solved in front of every prompt, trained and evaluated with it: a "
            "shipped id or best-of:SEARCH.jsonl, as in `promptlab eval --demonstration`"
        },
    )
    layer: int = field(default=-1, metadata={"help": "hidden-state layer read out, as in `promptlab eval`"})
    dtype: str = field(
        default="bfloat16", metadata={"help": "float32 | bfloat16 | float16 for the base model"}
    )
    quantization: str = field(default="none", metadata={"help": "none | nf4 (QLoRA: 4-bit NF4 base)"})
    max_length: int | None = field(
        default=None, metadata={"help": "token budget per prompt (cut in the slot)"}
    )

    objective: str = field(
        default="supervised",
        metadata={
            "help": "supervised: (anchor, positive[, hard negative]) with in-batch negatives; "
            "dropout: the same prompt twice (SimCSE); two_template: template and template2 as views"
        },
    )
    denoise: bool = field(
        default=False,
        metadata={"help": "PromptBERT template denoising: subtract the template-only state (training only)"},
    )
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature (SimCSE: 0.05)"})

    data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "sources: 'sick-train', 'stsb-train', a SimCSE CSV (sent0,sent1[,hard_neg]), "
            "'hub:org/name[@rev]', or a .txt file of sentences (one per line)"
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "SentEval folder (default $PROMPTLAB_DATA)"})
    min_score: float = field(
        default=4.0, metadata={"help": "stsb-train: pairs scored at least this are positives"}
    )
    holdout: str | None = field(
        default=None,
        metadata={
            "help": "drop training items found in any STS dev/test split: 'pairs' (the pair itself), "
            "'sentences' (any sentence of it), 'none'. Default: pairs for supervised, sentences otherwise"
        },
    )
    max_examples: int | None = field(default=None, metadata={"help": "a seeded subset of the training set"})

    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch's input"})
    target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Linear layers to adapt (module-name suffixes); default: every nn.Linear in the blocks"
        },
    )

    lora_layers: int | None = field(
        default=None,
        metadata={
            "help": "adapt only the N blocks just below the read-out layer (backward stops there: cheaper); "
            "default: every block below it"
        },
    )

    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    schedule: str = field(default="linear", metadata={"help": "after warm-up: constant | linear decay to 0"})
    grad_clip: float | None = field(default=1.0, metadata={"help": "max gradient norm (None: no clipping)"})
    batch_size: int = field(default=32, metadata={"help": "examples per step (in-batch negatives)"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (or give epochs)"})
    epochs: float | None = field(default=None, metadata={"help": "passes over the data (or give steps)"})
    seed: int = field(default=0, metadata={"help": "seeds data order, LoRA init and dropout"})

    eval_every: int = field(
        default=50, metadata={"help": "dev score (`select_on`) every K steps (0: only at the end)"}
    )
    select_on: str = field(
        default="STSBenchmark",
        metadata={
            "help": "the task whose dev split picks the best checkpoint: any task with a dev split "
            "(STSBenchmark, SICKRelatedness, TRECQA-rerank, SICK-pairclass, STSB-retrieval)"
        },
    )
    dev_pairs: int | None = field(
        default=500,
        metadata={"help": "seeded subset of an STS `select_on` task's dev pairs (0: all; STS-B has 1,500)"},
    )
    dev_seed: int = field(default=0, metadata={"help": "seed of the dev subset"})
    save_every: int | None = field(
        default=None, metadata={"help": "checkpoint every K steps (default eval_every)"}
    )
    max_minutes: float | None = field(
        default=None, metadata={"help": "stop (and say so in the log) after this much training wall time"}
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads (None: leave it)"})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "keep only each block's input in the forward pass and recompute the trained blocks in the "
            "backward: most of a batch's activation memory freed, the same gradients, the trained blocks "
            "run forward twice"
        },
    )

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise PromptlabError(f"finetune config: {message}")

        if isinstance(self.data, str):
            self.data = [self.data]
        for f in dataclasses.fields(self):
            default = None if f.default is dataclasses.MISSING else f.default
            check_type(getattr(self, f.name), f.type, f"finetune config: {f.name}", example=default)
        need(bool(self.model), 'set `model` (e.g. model = "smollm2-135m").')
        need(bool(self.output_dir), "set `output_dir` (a folder for the adapter and checkpoints).")
        for name, value, choices in (
            ("objective", self.objective, OBJECTIVES),
            ("quantization", self.quantization, QUANTIZATIONS),
            ("dtype", self.dtype, DTYPES),
            ("schedule", self.schedule, SCHEDULES),
        ):
            need(value in choices, f"{name} = {value!r} is not one of {', '.join(choices)}.")
        need(bool(self.data), '`data` is empty; list sources, e.g. data = ["sick-train", "stsb-train"].')
        if self.objective == "two_template":
            need(
                bool(self.template2) and self.template2 != self.template,
                "objective 'two_template' needs `template2`, a second template different from `template` "
                '(e.g. template = "promptbert", template2 = "promptbert-view2").',
            )
        else:
            need(
                self.template2 is None,
                f"`template2` is only used by objective 'two_template', not {self.objective!r}.",
            )
        if self.holdout is None:
            self.holdout = "pairs" if self.objective == "supervised" else "sentences"
        need(self.holdout in HOLDOUTS, f"holdout = {self.holdout!r} is not one of {', '.join(HOLDOUTS)}.")
        need((self.steps is None) != (self.epochs is None), "give exactly one of `steps` or `epochs`.")
        need(self.steps is None or self.steps > 0, f"steps = {self.steps} must be positive.")
        need(self.epochs is None or self.epochs > 0, f"epochs = {self.epochs} must be positive.")
        need(self.batch_size >= 2, f"batch_size = {self.batch_size}: in-batch negatives need at least 2.")
        need(self.temperature > 0, f"temperature = {self.temperature} must be positive (SimCSE uses 0.05).")
        need(self.lr > 0, f"lr = {self.lr} must be positive.")
        need(
            self.max_length is None or self.max_length > 0,
            f"max_length = {self.max_length} must be a positive number of tokens (leave it out: the model's limit).",
        )
        need(self.lora_r > 0, f"lora_r = {self.lora_r} must be a positive rank (e.g. 8).")
        need(self.lora_alpha > 0, f"lora_alpha = {self.lora_alpha} must be positive.")
        need(0 <= self.lora_dropout < 1, f"lora_dropout = {self.lora_dropout} must be in [0, 1).")
        need(
            self.lora_layers is None or self.lora_layers > 0,
            f"lora_layers = {self.lora_layers} must be positive.",
        )
        need(self.warmup_steps >= 0, f"warmup_steps = {self.warmup_steps} must be >= 0.")
        need(
            self.eval_every >= 0,
            f"eval_every = {self.eval_every} must be >= 0 (0: evaluate only at the end).",
        )
        from promptlab.evaluation.selection import check_selection_task

        try:
            self.select_on = check_selection_task(self.select_on)
        except PromptlabError as err:
            raise PromptlabError(f"finetune config: select_on: {err}") from None
        if self.dev_pairs == 0:
            self.dev_pairs = None
        need(
            self.dev_pairs is None or self.dev_pairs >= 2,
            f"dev_pairs = {self.dev_pairs}: use at least 2 (0: all).",
        )
        need(self.min_score >= 0, f"min_score = {self.min_score} must be >= 0 (STS-B scores run 0-5).")
        need(self.max_examples is None or self.max_examples > 0, "max_examples must be positive.")
        if self.save_every is None:
            self.save_every = self.eval_every
        need(self.save_every >= 0, f"save_every = {self.save_every} must be >= 0.")
        if self.target_modules is not None:
            need(
                isinstance(self.target_modules, list)
                and all(isinstance(t, str) and t for t in self.target_modules)
                and self.target_modules,
                'target_modules must be a non-empty list of module-name suffixes, e.g. ["q_proj", "v_proj"].',
            )

    # -- io ------------------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "finetune config") -> FinetuneConfig:
        unknown = [k for k in values if k not in cls.field_names()]
        if unknown:
            key = unknown[0]
            raise PromptlabError(
                f"{where}: unknown key {key!r}.{did_you_mean(key, cls.field_names())} "
                f"Known keys: {', '.join(cls.field_names())}."
            )
        try:
            return cls(**values)
        except TypeError as err:  # a required key is missing
            raise PromptlabError(f"{where}: {err}; add the missing key.") from None

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
        path = Path(path)
        if not path.is_file():
            raise PromptlabError(
                f"config file {path} does not exist; pass a .toml file (see experiments/finetune/)."
            )
        values = read_toml(path)
        values.update(overrides or {})
        return cls.from_dict(values, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(self, other: FinetuneConfig, *, ignore: tuple[str, ...] = RESUMABLE_CHANGES) -> list[str]:
        """Fields (outside ``ignore``) whose values differ: `a: old -> new`."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in mine if k not in ignore and mine[k] != theirs[k]
        ]


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as TOML (``steps=100``, ``data=["a"]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise PromptlabError(f"--set {text!r}: write KEY=VALUE, e.g. --set steps=200.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    return key.strip(), value

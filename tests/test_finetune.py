"""promptlab.finetune: CSE objectives, data builders, LoRA targets, the training loop and adapter loading.

Every model here is a deep copy of a tiny random fixture (LoRA is injected in place, so the session
fixtures must stay untouched). Expected values are computed independently: the InfoNCE loss by a
hand-written log-softmax, template denoising by tokenizing the prompt's pieces and running the model
unbatched with explicit position ids, and data builders against rows written out here.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import backend_for
from helpers import save_tiny_llama_64

from promptlab.backends import load_backend
from promptlab.backends.quantization import linear_4bit_layers
from promptlab.embedder import Embedder
from promptlab.errors import PromptlabError
from promptlab.finetune.config import FinetuneConfig, parse_override
from promptlab.finetune.data import (
    Example,
    TrainingData,
    build_training_data,
    sick_triplets,
    simcse_csv,
    stsb_pairs,
)
from promptlab.finetune.lora import (
    add_lora,
    block_linear_suffixes,
    block_stack,
    blocks_below,
    resolve_targets,
)
from promptlab.finetune.objectives import encode_with_grad, false_negatives, info_nce, template_only_batch
from promptlab.finetune.trainer import Trainer

pytest.importorskip("peft", reason="the finetune tests need the [train] extra (peft)")

# --------------------------------------------------------------------------- a small SentEval folder

STS_SUBSETS = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
LEAKED = ("A man is playing a guitar.", "A man plays the guitar.")  # an STS12 test pair, also in STS-B train
SICK_TEST_PAIR = ("The cat sits on the mat.", "A cat is sitting on a mat.")  # in SICK test and SICK train
_WORDS = (
    "man",
    "woman",
    "cat",
    "dog",
    "jockey",
    "children",
    "horse",
    "guitar",
    "onion",
    "mat",
    "field",
    "room",
)
DEV = [  # distinct words (the tiny tokenizers know no digits), gold scores in a shuffled order
    (f"A {_WORDS[i]} sits on the {_WORDS[-1 - i]}.", f"The {_WORDS[(i + 3) % 12]} runs.", (i * 7 % 11) / 2.2)
    for i in range(12)
]
STSB_TRAIN = [
    (*LEAKED, 4.8),
    ("Two dogs run through a field.", "Two dogs are running in a field.", 4.2),
    ("A woman is slicing an onion.", "A woman cuts an onion.", 4.0),
    ("A woman is slicing an onion.", "A man is riding a horse.", 0.4),
    ("Children watch the dogs.", "The kids are watching dogs.", 3.9),
]
SICK_TRAIN = [  # (A, B, judgment)
    ("P1 a man rides a horse", "H1 a person rides a horse", "ENTAILMENT"),
    ("P1 a man rides a horse", "H2 a man is on a horse", "ENTAILMENT"),
    ("P1 a man rides a horse", "C1 nobody rides a horse", "CONTRADICTION"),
    ("C2 the man is not cooking", "P2 the man is cooking", "CONTRADICTION"),  # P2 as sentence_B
    ("P2 the man is cooking", "H3 someone is cooking", "ENTAILMENT"),
    ("P3 a girl sings", "H4 a child sings", "ENTAILMENT"),  # no contradiction: a plain pair
    ("P3 a girl sings", "N1 a girl sings loudly", "NEUTRAL"),
    (*SICK_TEST_PAIR, "ENTAILMENT"),
]


def write_senteval(root: Path) -> Path:
    sts = root / "downstream" / "STS"
    for task, subsets in STS_SUBSETS.items():
        folder = sts / f"{task}-en-test"
        folder.mkdir(parents=True)
        for subset in subsets:
            rows = [(f"{task} {subset} {i} first .", f"{task} {subset} {i} second .", i) for i in range(3)]
            if (task, subset) == ("STS12", "MSRpar"):
                rows[0] = (*reversed(LEAKED), 4.6)  # reversed order: the holdout must still catch it
            (folder / f"STS.input.{subset}.txt").write_text("".join(f"{a}\t{b}\n" for a, b, _ in rows))
            (folder / f"STS.gs.{subset}.txt").write_text("".join(f"{g}\n" for *_, g in rows))
    stsb = sts / "STSBenchmark"
    stsb.mkdir()
    test = [
        (f"A {w} sits.", f"The {w} runs on the {v}.", i / 2)
        for i, (w, v) in enumerate(zip(_WORDS[:8], _WORDS[4:], strict=True))
    ]
    for split, rows in {"train": STSB_TRAIN, "dev": DEV, "test": test}.items():
        lines = [
            f"main-captions\tMSRvid\t2012\t{i:04d}\t{g:.3f}\t{a}\t{b}\n" for i, (a, b, g) in enumerate(rows)
        ]
        (stsb / f"sts-{split}.csv").write_text("".join(lines))
    sick = root / "downstream" / "SICK"
    sick.mkdir()
    header = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
    files = {
        "SICK_train.txt": [(a, b, 4.0, j) for a, b, j in SICK_TRAIN],
        "SICK_trial.txt": [("trial a", "trial b", 3.0, "NEUTRAL"), ("trial c", "trial d", 1.0, "NEUTRAL")],
        "SICK_test_annotated.txt": [
            (*SICK_TEST_PAIR, 4.5, "ENTAILMENT"),
            ("sick x", "sick y", 1.0, "NEUTRAL"),
        ],
    }
    for name, rows in files.items():
        body = "".join(f"{i}\t{a}\t{b}\t{s}\t{j}\n" for i, (a, b, s, j) in enumerate(rows))
        (sick / name).write_text(header + body)
    return root


@pytest.fixture(scope="module")
def senteval(tmp_path_factory) -> Path:
    return write_senteval(tmp_path_factory.mktemp("senteval"))


def fresh(fixture) -> tuple:
    model, tokenizer = fixture
    return copy.deepcopy(model), tokenizer


TOY = [  # separable pairs: each positive shares its anchor's distinctive words
    Example("A man is playing a guitar.", "a man playing guitar"),
    Example("A woman is slicing an onion.", "woman slicing onion"),
    Example("The cat sits on the mat.", "cat sits mat"),
    Example("Two dogs run through a field.", "dogs run field"),
    Example("He said hello to everyone in the room?", "hello everyone room"),
    Example("A jockey riding a horse.", "jockey horse riding"),
    Example("Children watch while dogs run!", "children watch dogs"),
    Example("Represent the sentence for searching.", "represent searching"),
]


def config(tmp_path: Path, senteval: Path, **overrides) -> FinetuneConfig:
    values = dict(
        model="tiny",
        output_dir=str(tmp_path / "run"),
        data=["toy.csv"],
        data_dir=str(senteval),
        steps=6,
        batch_size=4,
        lr=5e-3,
        eval_every=3,
        dev_pairs=0,
        holdout="none",
        num_threads=None,
    )
    values.update(overrides)
    return FinetuneConfig(**values)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective": "triplet"}, "objective = 'triplet' is not one of supervised, dropout, two_template"),
        ({"steps": None}, "exactly one of `steps` or `epochs`"),
        ({"epochs": 1.0}, "exactly one of `steps` or `epochs`"),
        ({"batch_size": 1}, "in-batch negatives need at least 2"),
        ({"temperature": 0.0}, "temperature = 0.0 must be positive"),
        ({"quantization": "int3"}, "quantization = 'int3' is not one of none, nf4"),
        ({"objective": "two_template"}, "needs `template2`"),
        ({"template2": "promptbert-view2"}, "only used by objective 'two_template'"),
        ({"data": []}, "`data` is empty"),
        ({"lora_dropout": 1.0}, "lora_dropout = 1.0 must be in [0, 1)"),
        ({"holdout": "all"}, "holdout = 'all' is not one of pairs, sentences, none"),
        ({"target_modules": []}, "target_modules must be a non-empty list"),
        (
            {"select_on": "STS12"},
            "select_on: STS12 has no dev split to select on; choose one of STSBenchmark",
        ),
        ({"select_on": "trecqa-rerak"}, "select_on: unknown task 'trecqa-rerak'"),
    ],
)
def test_config_rejects_bad_values(tmp_path, senteval, overrides, message):
    with pytest.raises(
        PromptlabError, match=message.replace("(", r"\(").replace("[", r"\[").replace(")", r"\)")
    ):
        config(tmp_path, senteval, **overrides)


def test_config_toml_unknown_key_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "m"\noutput_dir = "o"\ndata = ["sick-train"]\nsteps = 3\nlearning_rate = 1e-4\n')
    with pytest.raises(PromptlabError, match="unknown key 'learning_rate'.*Known keys"):
        FinetuneConfig.from_toml(path)
    path.write_text('model = "m"\noutput_dir = "o"\ndata = ["sick-train"]\nsteps = 3\n')
    cfg = FinetuneConfig.from_toml(
        path, dict([parse_override("steps=7"), parse_override("template=promptbert")])
    )
    assert (cfg.steps, cfg.template, cfg.holdout) == (7, "promptbert", "pairs")
    assert FinetuneConfig.from_toml(path, {"objective": "dropout"}).holdout == "sentences"


# --------------------------------------------------------------------------- data


def test_sick_triplets(senteval):
    got = sick_triplets(senteval)
    assert got == [
        Example("P1 a man rides a horse", "H1 a person rides a horse", "C1 nobody rides a horse"),
        Example("P1 a man rides a horse", "H2 a man is on a horse", "C1 nobody rides a horse"),
        Example("P2 the man is cooking", "H3 someone is cooking", "C2 the man is not cooking"),
        Example("P3 a girl sings", "H4 a child sings", None),
        Example(*SICK_TEST_PAIR, None),
    ]


@pytest.mark.parametrize(("min_score", "n"), [(4.0, 3), (4.5, 1), (0.0, 5)])
def test_stsb_pairs_by_score(senteval, min_score, n):
    expected = [Example(a, b) for a, b, g in STSB_TRAIN if g >= min_score]
    assert stsb_pairs(senteval, min_score) == expected and len(expected) == n


@pytest.mark.parametrize(
    ("holdout", "dropped"),
    [
        ("none", []),
        ("pairs", [Example(*LEAKED), Example(*SICK_TEST_PAIR)]),  # exact eval pairs, either order
        # any sentence of an eval pair; the SICK pair's sentences are also SICK test sentences
        ("sentences", [Example(*LEAKED), Example(*SICK_TEST_PAIR)]),
    ],
)
def test_holdout_drops_eval_items(senteval, holdout, dropped):
    data = build_training_data(
        ["sick-train", "stsb-train"], objective="supervised", data_dir=senteval, holdout=holdout
    )
    everything = sick_triplets(senteval) + stsb_pairs(senteval)
    assert data.examples == [e for e in everything if e not in dropped]
    sick = data.report["sources"]["sick-train"]
    assert (sick["examples"], sick["with_hard_negative"], sick.get("held_out", 0)) == (
        5,
        3,
        len(dropped) // 2,
    )


def test_unsupervised_uses_every_sentence_of_the_builders(senteval):
    data = build_training_data(["stsb-train"], objective="dropout", data_dir=senteval, holdout="sentences")
    sentences = list(dict.fromkeys(t for a, b, _ in STSB_TRAIN for t in (a, b)))
    assert [e.anchor for e in data.examples] == [s for s in sentences if s not in LEAKED]
    assert all(e.positive is None for e in data.examples)


def test_csv_missing_column_names_it_and_the_columns_found(tmp_path):
    path = tmp_path / "nli.csv"
    path.write_text("sent0,hard_negative\na,b\n")
    with pytest.raises(
        PromptlabError, match=r"missing column 'sent1'; columns found: 'sent0', 'hard_negative'"
    ):
        simcse_csv(path)


def test_csv_with_and_without_hard_negatives(tmp_path):
    path = tmp_path / "nli.csv"
    path.write_text('sent0,sent1,hard_neg\n"a, b",c,d\ne,f,\n')
    assert simcse_csv(path) == [Example("a, b", "c", "d"), Example("e", "f", None)]


@pytest.mark.parametrize(
    ("source", "objective", "holdout", "message"),
    [
        ("empty.txt", "dropout", "none", "no training examples: 0 read"),
        ("leak.csv", "supervised", "pairs", "no training examples: 1 read.*1 dropped by holdout='pairs'"),
        (
            "sentences.txt",
            "supervised",
            "none",
            "holds single sentences, but objective 'supervised' needs pairs",
        ),
        ("data.json", "supervised", "none", "is not one of sick-train, stsb-train, a .csv"),
    ],
)
def test_bad_datasets(tmp_path, senteval, source, objective, holdout, message):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "sentences.txt").write_text("one\ntwo\n")
    (tmp_path / "leak.csv").write_text(f"sent0,sent1\n{LEAKED[0]},{LEAKED[1]}\n")
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(PromptlabError, match=message):
        build_training_data([str(tmp_path / source)], objective=objective, data_dir=senteval, holdout=holdout)


# --------------------------------------------------------------------------- the loss


def test_info_nce_equals_hand_written_log_softmax():
    torch.manual_seed(1)
    a, c = torch.randn(3, 5), torch.randn(5, 5)
    exclude = torch.zeros(3, 5, dtype=torch.bool)
    exclude[0, 2] = True
    expected = 0.0
    for i in range(3):
        sims = [float(a[i] @ c[j] / (a[i].norm() * c[j].norm())) / 0.1 for j in range(5) if not exclude[i, j]]
        target = float(a[i] @ c[i] / (a[i].norm() * c[i].norm())) / 0.1
        expected += -(target - math.log(sum(math.exp(s) for s in sims)))
    assert float(info_nce(a, c, 0.1, exclude)) == pytest.approx(expected / 3, rel=1e-5)


def test_false_negatives_mask():
    anchors, positives = ["a", "a", "b"], ["p", "q", "a"]
    candidates = positives + ["n", "p"]  # a hard negative, and one equal to row 0's positive
    expected = [
        [False, True, True, False, True],  # row 1 shares anchor "a"; "a" is the anchor; "p" is the positive
        [True, False, True, False, False],
        [False, False, False, False, False],
    ]
    assert false_negatives(anchors, positives, candidates).tolist() == expected


# --------------------------------------------------------------------------- the read-out with gradients


@pytest.mark.parametrize(
    ("fixture", "template"),
    [("tiny_llama", "prompteol"), ("tiny_opt", "prompteol"), ("tiny_bert", "promptbert")],
)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_training_vectors_are_the_extractors(request, fixture, template, padding_side):
    backend = backend_for(request.getfixturevalue(fixture))
    embedder = Embedder(backend, template, layer=-1, padding_side=padding_side)
    sentences = [e.anchor for e in TOY[:5]]
    vectors = encode_with_grad(embedder, sentences)
    assert vectors.requires_grad
    np.testing.assert_allclose(vectors.detach().numpy(), embedder.encode(sentences), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_template_denoising_subtracts_the_template_only_state(tiny_bert, padding_side):
    model, tokenizer = tiny_bert
    embedder = Embedder(backend_for(tiny_bert), "promptbert", padding_side=padding_side)
    sentences = ["a man is playing a guitar", "The cat sits.", "two dogs run through a field of grass"]
    got = encode_with_grad(embedder, sentences, denoise=True).detach()
    for sentence, vector in zip(sentences, got, strict=True):
        # Independently: [CLS] head sentence tail [SEP], piece by piece (normalisation: a final ".").
        s = sentence if sentence[-1] in ".?!\"'" else sentence + "."
        head, sent, tail = (
            tokenizer(t, add_special_tokens=False)["input_ids"]
            for t in ('This sentence : "', s, '" means [MASK] .')
        )
        full = [tokenizer.cls_token_id, *head, *sent, *tail, tokenizer.sep_token_id]
        assert full == tokenizer('This sentence : "' + s + '" means [MASK] .')["input_ids"]
        with torch.no_grad():
            h_full = model(input_ids=torch.tensor([full])).last_hidden_state[0]
            bias_ids = [tokenizer.cls_token_id, *head, *tail, tokenizer.sep_token_id]
            n_head = 1 + len(head)
            positions = list(range(n_head)) + list(range(n_head + len(sent), len(full)))
            h_bias = model(
                input_ids=torch.tensor([bias_ids]), position_ids=torch.tensor([positions])
            ).last_hidden_state[0]
        mask_full = full.index(tokenizer.mask_token_id)
        mask_bias = bias_ids.index(tokenizer.mask_token_id)
        torch.testing.assert_close(vector, h_full[mask_full] - h_bias[mask_bias], atol=2e-5, rtol=1e-4)
        # Not a no-op: the template-only state at shifted positions differs from the unshifted one.
        with torch.no_grad():
            h_plain = model(input_ids=torch.tensor([bias_ids])).last_hidden_state[0]
        assert not torch.allclose(h_plain[mask_bias], h_bias[mask_bias], atol=1e-3)


def test_template_only_batch_positions(tiny_bert):
    embedder = Embedder(backend_for(tiny_bert), "promptbert")
    prompts = [embedder.prompts.encode(s) for s in ("a man is playing a guitar", "The cat sits.")]
    batch = template_only_batch(prompts, pad_id=0, padding_side="left")
    for row, p in enumerate(prompts):
        kept = [i for i in range(len(p.ids)) if not p.slot[0] <= i < p.slot[1]]
        width = batch.input_ids.shape[1]
        assert batch.input_ids[row, width - len(kept) :].tolist() == [p.ids[i] for i in kept]
        assert batch.position_ids[row, width - len(kept) :].tolist() == kept
        assert int(batch.input_ids[row, batch.targets[row]]) == embedder.backend.tokenizer.mask_token_id


def test_denoising_needs_a_single_position_template(tiny_bert):
    embedder = Embedder(backend_for(tiny_bert), "none")
    with pytest.raises(PromptlabError, match="needs a mask or next-token template"):
        encode_with_grad(embedder, ["a man"], denoise=True)


# --------------------------------------------------------------------------- LoRA targets

EXPECTED_TARGETS = {
    "tiny_llama": [
        "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
        "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj",
    ],
    "tiny_opt": [
        "fc1", "fc2", "self_attn.k_proj", "self_attn.out_proj", "self_attn.q_proj", "self_attn.v_proj",
    ],
    "tiny_bert": [  # the pooler's dense layer lies outside the blocks: not adapted
        "attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value",
        "intermediate.dense", "output.dense",
    ],
}  # fmt: skip


@pytest.mark.parametrize("fixture", list(EXPECTED_TARGETS))
def test_targets_are_the_block_linear_layers(request, fixture):
    model, _ = request.getfixturevalue(fixture)
    n = model.config.num_hidden_layers
    _, suffixes = block_linear_suffixes(model, n)
    assert suffixes == EXPECTED_TARGETS[fixture]
    peft_model = add_lora(
        backend_for(fresh(request.getfixturevalue(fixture))),
        r=2, alpha=4, dropout=0.0, target_modules=None, quantized=False, blocks=blocks_below(-1, n, 1),
    )  # fmt: skip
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in peft_model.named_parameters() if ".lora_A" in name}
    assert len(adapted) == len(EXPECTED_TARGETS[fixture])  # one block (the top one) only
    assert all(f".{n - 1}." in name for name in adapted)


def test_target_matching_nothing_is_refused(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(
        PromptlabError, match=r"'query' matches no nn.Linear.*mlp.down_proj, .*self_attn.v_proj"
    ):
        resolve_targets(model, 3, ["q_proj", "query"])
    assert "self_attn\\.q_proj" in resolve_targets(model, 3, ["q_proj"])


@pytest.mark.parametrize(
    ("layer", "count", "blocks"), [(-1, None, range(0, 3)), (-1, 2, range(1, 3)), (2, 1, range(1, 2))]
)
def test_blocks_below_the_read_out(layer, count, blocks):
    assert blocks_below(layer, 3, count) == blocks


# --------------------------------------------------------------------------- training


def toy_loss(trainer) -> float:
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.objective.loss(TOY))


def test_only_adapter_weights_change_and_loss_falls(tmp_path, senteval, tiny_llama):
    model, tokenizer = fresh(tiny_llama)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = config(tmp_path, senteval, steps=30, batch_size=8, lr=1e-2, eval_every=0, temperature=0.1)
    trainer = Trainer(cfg, backend=backend_for((model, tokenizer)), data=TrainingData(TOY))
    start_loss = toy_loss(trainer)
    lora_before = {k: v.clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    trainer.run(progress=False)
    after = trainer.model.state_dict()
    lora_names = {n for n in after if "lora_" in n}
    assert lora_names and set(lora_before) == {n for n in after if "lora_" in n and n in lora_before}
    for name, value in after.items():
        if name in lora_names:
            continue
        original = name.replace(".base_layer", "")  # peft keeps the wrapped Linear as base_layer
        assert torch.equal(value, before[original]), f"{name} changed"
    assert any(not torch.equal(lora_before[n], after[n]) for n in lora_before if "lora_B" in n)
    end_loss = toy_loss(trainer)
    assert end_loss < 0.5 * start_loss, (start_loss, end_loss)


def run_until(trainer, stop_at: int | None, *, resume: bool = False):
    """``trainer`` run to its end, or interrupted (as by Ctrl-C) once step ``stop_at`` is done."""

    def stop(step, loss):
        if step == stop_at:
            raise KeyboardInterrupt

    try:
        trainer.run(progress=False, on_step=stop, resume=resume)
    except KeyboardInterrupt:
        pass
    return trainer


@pytest.mark.parametrize("layout", ["current", "format 2", "resumed with gradient checkpointing"])
def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, senteval, tiny_llama, layout):
    def run(folder: str, *, stop_at: int | None = None, resume: bool = False):
        cfg = config(
            tmp_path, senteval, output_dir=str(tmp_path / folder), steps=7, save_every=2, lora_dropout=0.2,
            gradient_checkpointing=resume and layout == "resumed with gradient checkpointing",
        )  # fmt: skip
        trainer = Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY[:6]))
        return run_until(trainer, stop_at, resume=resume)

    whole = run("whole")
    run("parts", stop_at=5)  # interrupted after step 5; the last checkpoint is step 4
    path = tmp_path / "parts" / "checkpoint-last" / "trainer_state.pt"
    state = torch.load(path, weights_only=True)
    assert state["step"] == 4 and state["format"] == 3
    if layout == "format 2":  # the layout without GPU RNG states still resumes
        torch.save({k: v for k, v in state.items() if k != "cuda_rng"} | {"format": 2}, path)
    resumed = run("parts", resume=True)
    assert resumed.step == whole.step == 7
    mine = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    reference = {n: p for n, p in whole.model.named_parameters() if p.requires_grad}
    assert mine.keys() == reference.keys()
    for name in mine:
        assert torch.equal(mine[name], reference[name]), name
    assert [e["dev_spearman"] for e in resumed.history] == [e["dev_spearman"] for e in whole.history]
    events = [
        json.loads(line)["event"] for line in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()
    ]
    assert events[:4] == ["start", "step", "step", "step"] and events[4] == "eval"
    assert "resume" in events and events[-1] == "end"


def block_calls(model: torch.nn.Module, num_layers: int) -> list[int]:
    """Forward calls of each transformer block from now on, counted as they start (a rerun block counts again;
    checkpointing may stop a rerun early, once it has what the backward needs)."""
    stack = model.get_submodule(block_stack(model, num_layers))
    calls = [0] * len(stack)
    for index, block in enumerate(stack):
        block.register_forward_pre_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    return calls


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_gradient_checkpointing_reruns_only_the_trained_blocks_and_keeps_the_gradients(
    tmp_path, senteval, tokenizer_dir, quantization
):
    if quantization == "nf4":
        pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra (bitsandbytes)")

    def one_step(recompute: bool):
        cfg = config(
            tmp_path / str(recompute), senteval, model=str(tokenizer_dir), dtype="float32",
            quantization=quantization, lora_layers=1, lora_dropout=0.2, gradient_checkpointing=recompute,
        )  # fmt: skip
        trainer = Trainer(cfg, data=TrainingData(TOY))
        calls = block_calls(trainer.model, trainer.backend.num_layers)
        trainer.model.train()
        torch.manual_seed(1)  # the same LoRA dropout masks in both runs
        loss = trainer.objective.loss(trainer.batch(0))
        forward_calls = list(calls)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        return loss.item(), grads, forward_calls, calls

    loss, grads, forward, after_backward = one_step(False)
    loss_rc, grads_rc, forward_rc, after_backward_rc = one_step(True)
    # 2 blocks, LoRA on the top one: only it is rerun in the backward; the frozen block below is not.
    assert forward == forward_rc == after_backward and forward[0] == forward[1] > 0
    assert after_backward_rc == [forward[0], 2 * forward[1]]
    assert loss_rc == loss and grads_rc.keys() == grads.keys() and len(grads) > 2
    assert all(grad.abs().sum() > 0 for name, grad in grads.items() if "lora_B" in name)  # A's are 0 at B = 0
    for name, grad in grads.items():
        torch.testing.assert_close(grads_rc[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_on_a_model_without_it_is_refused(tmp_path, senteval, tiny_llama):
    model, tokenizer = fresh(tiny_llama)
    model.supports_gradient_checkpointing = False  # as a model class that does not implement it
    cfg = config(tmp_path, senteval, gradient_checkpointing=True)
    with pytest.raises(
        PromptlabError, match="does not support gradient checkpointing; set gradient_checkpointing = false"
    ):
        Trainer(cfg, backend=backend_for((model, tokenizer)), data=TrainingData(TOY))


def test_the_memory_benchmark_runs_a_config_with_and_without_gradient_checkpointing(
    tmp_path, senteval, tokenizer_dir
):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import finetune_memory

    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        f'model = "{tokenizer_dir}"\noutput_dir = "unused"\ndtype = "float32"\ndata = ["sick-train"]\n'
        f'data_dir = "{senteval}"\nholdout = "none"\nbatch_size = 4\nsteps = 50\nnum_threads = 1\n'
    )
    output = tmp_path / "record.json"
    assert finetune_memory.main([str(config_file), "--steps", "1", "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert set(record["runs"]) == {"plain", "gradient checkpointing"}
    for run in [record["load_only"], *record["runs"]["plain"], *record["runs"]["gradient checkpointing"]]:
        assert run["peak_rss_mib"] > 100 and run["seconds_per_step"] > 0
    assert set(record["ratio_checkpointing_over_plain"]) == {"peak_rss_mib", "seconds_per_step"}


class _WritesMarker:
    """Unpickling this runs code: it creates the file ``marker`` (the attack a checkpoint must not allow)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_resume_refuses_a_crafted_checkpoint_without_running_it(tmp_path, senteval, tiny_llama, writer):
    import pickle

    cfg = config(tmp_path, senteval, steps=2, save_every=1, eval_every=0)
    Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY)).run(progress=False)
    path = tmp_path / "run" / "checkpoint-last" / "trainer_state.pt"
    marker = tmp_path / "marker"
    crafted = {**torch.load(path, weights_only=True), "history": [_WritesMarker(marker)]}
    if writer == "torch.save":
        torch.save(crafted, path)
    else:
        path.write_bytes(pickle.dumps(crafted, protocol=2))
    with pytest.raises(PromptlabError) as err:
        Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY)).run(
            progress=False, resume=True
        )
    message = str(err.value)
    assert "\n" not in message and f"cannot resume from {path}" in message and "--overwrite" in message
    assert not marker.exists()
    # The file is a working exploit: an unrestricted unpickler would have created the marker.
    torch.load(path, weights_only=False) if writer == "torch.save" else pickle.loads(path.read_bytes())
    assert marker.read_text() == "pwned"


OTHER_STATES = {
    "without its format": lambda path, state: torch.save(
        {k: v for k, v in state.items() if k != "format"}, path
    ),
    # As earlier promptlab versions saved it: NumPy's RNG state as a tuple holding an ndarray.
    "with numpy objects": lambda path, state: torch.save(
        {k: v for k, v in state.items() if k != "format"} | {"numpy_rng": np.random.get_state()}, path
    ),
    "truncated": lambda path, state: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "format 2 with format 3's keys": lambda path, state: torch.save(state | {"format": 2}, path),
    "a format that is not a number": lambda path, state: torch.save(state | {"format": [3]}, path),
}


@pytest.mark.parametrize("other", list(OTHER_STATES))
def test_resume_refuses_a_checkpoint_of_another_format(tmp_path, senteval, tiny_llama, other):
    cfg = config(tmp_path, senteval, steps=2, save_every=1, eval_every=0)
    Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY)).run(progress=False)
    path = tmp_path / "run" / "checkpoint-last" / "trainer_state.pt"
    state = torch.load(path, weights_only=True)
    assert state["format"] == 3
    OTHER_STATES[other](path, state)
    with pytest.raises(PromptlabError, match="not a trainer state this promptlab version reads"):
        Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY)).run(
            progress=False, resume=True
        )


def test_output_dir_guards(tmp_path, senteval, tiny_llama):
    cfg = config(tmp_path, senteval, steps=1, eval_every=0)
    Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY)).run(progress=False)
    with pytest.raises(PromptlabError, match="is not empty; pass --resume"):
        Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY)).run(progress=False)
    # Checkpoints are local (not committed): a run folder without one offers only a fresh start.
    shutil.rmtree(tmp_path / "run" / "checkpoint-last")
    with pytest.raises(PromptlabError, match="no checkpoint-last/ to resume from .* pass --overwrite"):
        Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY)).run(progress=False)
    assert (tmp_path / "run" / "finetune.json").is_file()  # refused, nothing deleted
    changed = config(tmp_path, senteval, steps=1, eval_every=0, lr=1e-3)
    with pytest.raises(PromptlabError, match=r"config changed \(lr: 0.005 -> 0.001\)"):
        Trainer(changed, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY)).run(
            progress=False, resume=True
        )


@pytest.mark.parametrize(
    ("fixture", "overrides", "message"),
    [
        ("tiny_llama", {"template": "promptbert"}, "tokenizer has no mask token"),
        ("tiny_llama", {"objective": "dropout"}, "this model has no dropout"),
        ("tiny_llama", {"target_modules": ["query"]}, "'query' matches no nn.Linear"),
        (
            "tiny_bert",
            {"objective": "two_template", "template": "promptbert", "template2": "none"},
            "read out differently",
        ),
    ],
)
def test_bad_training_setups(request, tmp_path, senteval, fixture, overrides, message):
    cfg = config(tmp_path, senteval, **overrides)
    with pytest.raises(PromptlabError, match=message):
        Trainer(cfg, backend=backend_for(fresh(request.getfixturevalue(fixture))), data=TrainingData(TOY))


@pytest.mark.parametrize(
    "overrides",
    [
        {"objective": "two_template", "template2": "promptbert-view2", "denoise": True},
        {"objective": "dropout"},
        {"objective": "supervised", "denoise": True},
    ],
)
def test_promptbert_objectives_train_on_an_encoder(tmp_path, senteval, tiny_bert, overrides):
    cfg = config(tmp_path, senteval, template="promptbert", steps=2, eval_every=0, **overrides)
    data = TrainingData(TOY if overrides["objective"] == "supervised" else [Example(e.anchor) for e in TOY])
    result = Trainer(cfg, backend=backend_for(fresh(tiny_bert)), data=data).run(progress=False)
    assert (
        result.steps == 2
        and result.best_step == 2
        and (tmp_path / "run" / "best" / "adapter_config.json").is_file()
    )


@pytest.mark.parametrize("task", ["STSBenchmark", "SICKRelatedness", "SICK-pairclass", "TRECQA-rerank"])
def test_dev_score_is_evaluate_on_the_select_on_task(tmp_path, tiny_llama, task):
    from test_evaluation import write_fake_senteval
    from test_tasks import write_sick_entailment, write_trecqa

    from promptlab.evaluation import evaluate

    data_dir = write_fake_senteval(tmp_path / "data/senteval")
    write_sick_entailment(data_dir)
    write_trecqa(tmp_path / "data")
    cfg = config(tmp_path, data_dir, select_on=task.lower())  # any spelling; the catalog name is kept
    assert cfg.select_on == task
    trainer = Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY))
    plain = Embedder(backend_for(fresh(tiny_llama)), cfg.template, layer=cfg.layer)  # LoRA's B starts at 0
    expected = evaluate(plain.encode, [task], split="dev", data_dir=data_dir)[task]
    assert not math.isnan(expected)
    assert trainer.dev_score() == pytest.approx(expected, abs=1e-4)
    assert trainer.adapter_metadata(0, expected)["dev_task"] == task


def refused_before_the_model_loads(cfg: FinetuneConfig, message: str) -> None:
    """``Trainer(cfg)`` raises ``message`` without loading a model (a bad input fails in a second)."""

    def no_model(*args, **kwargs):
        raise AssertionError(f"the model was loaded before refusing with {message!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("promptlab.backends.load_backend", no_model)
        with pytest.raises(PromptlabError, match=message):
            Trainer(cfg, data=TrainingData(TOY))


def test_missing_dev_data_fails_before_the_model_loads(tmp_path, senteval):
    cfg = config(tmp_path, senteval, select_on="TRECQA-rerank")  # the fixture folder has no TREC QA
    refused_before_the_model_loads(cfg, "TRECQA|answer-selection")


# --------------------------------------------------------------------------- adapters through the Embedder


@pytest.fixture(scope="module")
def trained_llama(tmp_path_factory, senteval, tiny_llama):
    """A tiny LLaMA adapter evaluated only at the end, so best/ holds the final weights."""
    out = tmp_path_factory.mktemp("adapter")
    cfg = config(out, senteval, steps=4, eval_every=0, lr=2e-2)
    trainer = Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY))
    trainer.run(progress=False)
    return trainer, out / "run" / "best"


@pytest.mark.parametrize("merge", [False, True])
def test_adapter_loads_through_the_embedder(trained_llama, tiny_llama, merge):
    trainer, best = trained_llama
    sentences = [e.positive for e in TOY]
    trainer.model.eval()
    expected = trainer.view.encode(sentences)
    embedder = Embedder(backend_for(fresh(tiny_llama)), "prompteol", adapter=str(best), merge_adapter=merge)
    np.testing.assert_allclose(embedder.encode(sentences), expected, atol=1e-5, rtol=1e-5)
    plain = Embedder(backend_for(tiny_llama), "prompteol").encode(sentences)
    assert np.abs(plain - expected).max() > 1e-3  # the adapter does change the vectors
    described = embedder.describe()
    assert described["adapter"] == str(best) and described["adapter_merged"] is merge
    meta = json.loads((best / "promptlab_adapter.json").read_text())
    assert meta["config"]["lr"] == 2e-2 and meta["template"]["name"] == "prompteol" and meta["step"] == 4


def test_a_demonstration_is_trained_in_every_prompt_and_recorded(tmp_path, senteval, tiny_llama):
    cfg = config(tmp_path, senteval, steps=4, eval_every=0, lr=2e-2, demonstration="eol-opt-125m")
    trainer = Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY))
    # What is trained is the prompt `promptlab eval --demonstration` reads: the solved example, then the template.
    assert trainer.view.template.text.startswith(
        'This sentence : "A man is smoking." means in one word:"Smoking". This sentence : "'
    )
    sentences = [e.positive for e in TOY]
    evaluated = Embedder(trainer.backend, "prompteol", demonstration="eol-opt-125m")
    np.testing.assert_allclose(
        encode_with_grad(trainer.view, sentences).detach().numpy(),
        evaluated.encode(sentences),
        atol=2e-5,
        rtol=1e-4,
    )
    trainer.run(progress=False)
    trainer.model.eval()
    best = tmp_path / "run" / "best"
    meta = json.loads((best / "promptlab_adapter.json").read_text())
    assert meta["demonstration"]["id"] == "eol-opt-125m" and meta["config"]["demonstration"] == "eol-opt-125m"
    with_demo = Embedder(
        backend_for(fresh(tiny_llama)), "prompteol", demonstration="eol-opt-125m", adapter=str(best)
    )
    np.testing.assert_allclose(
        with_demo.encode(sentences), trainer.view.encode(sentences), atol=1e-5, rtol=1e-5
    )
    with pytest.warns(UserWarning, match=r"trained with template 'prompteol\+eol-opt-125m'"):
        Embedder(backend_for(fresh(tiny_llama)), "prompteol", adapter=str(best))


def test_a_demonstration_from_evaluation_data_is_flagged_when_training_holds_it_out(
    tmp_path, senteval, tiny_llama
):
    cfg = config(tmp_path, senteval, demonstration="eol-opt-125m", holdout="pairs")
    with pytest.warns(UserWarning, match="'eol-opt-125m' is a sentence of STS12 test"):
        Trainer(cfg, backend=backend_for(fresh(tiny_llama)), data=TrainingData(TOY))


def test_a_search_without_candidates_fails_before_the_model_loads(tmp_path, senteval):
    search = tmp_path / "search.jsonl"
    search.write_text("")
    cfg = config(tmp_path, senteval, demonstration=f"best-of:{search}")
    refused_before_the_model_loads(cfg, "holds no scored demonstration candidates")


def test_adapter_on_another_base_is_refused(trained_llama, tiny_opt):
    _, best = trained_llama
    with pytest.raises(
        PromptlabError,
        match=r"trained on 'tiny-random' \(LlamaModel, 3 layers\), "
        r"but the model given is 'tiny-random' \(OPTModel, 2 layers\)",
    ):
        Embedder(backend_for(fresh(tiny_opt)), "prompteol", adapter=str(best))


def test_not_an_adapter_folder(tmp_path, tiny_llama):
    with pytest.raises(PromptlabError, match="not a LoRA adapter folder"):
        Embedder(backend_for(tiny_llama), "prompteol", adapter=str(tmp_path))


def test_qlora_trains_lora_on_a_4bit_base(tmp_path, senteval, tokenizer_dir):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra (bitsandbytes)")
    cfg = config(
        tmp_path, senteval, model=str(tokenizer_dir), quantization="nf4", dtype="float32", eval_every=0
    )
    trainer = Trainer(cfg, data=TrainingData(TOY))
    layer = trainer.model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit"
    packed = layer.base_layer.weight.detach().clone()
    lora_b = layer.lora_B["default"].weight.detach().clone()
    trainer.run(progress=False)
    assert torch.equal(layer.base_layer.weight, packed)  # the 4-bit base is frozen
    assert not torch.equal(layer.lora_B["default"].weight, lora_b)
    # The adapter also loads onto the unquantized base (same weights file, same identity).
    vectors = Embedder(str(tokenizer_dir), "prompteol", adapter=str(tmp_path / "run" / "best")).encode(
        ["A man."]
    )
    assert np.isfinite(vectors).all()


def test_a_qlora_adapter_merges_into_the_dequantized_base_with_its_vectors(tmp_path, senteval, tokenizer_dir):
    """Merged, a QLoRA adapter gives the vectors it gives on its 4-bit base (where peft's own merge would
    quantize the sum again), from a plain float model without bitsandbytes layers."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra (bitsandbytes)")
    cfg = config(
        tmp_path, senteval, model=str(tokenizer_dir), quantization="nf4", dtype="float32", eval_every=0,
        lr=5e-2,
    )  # fmt: skip
    Trainer(cfg, data=TrainingData(TOY)).run(progress=False)
    adapter = str(tmp_path / "run" / "best")
    sentences = [example.anchor for example in TOY]

    def embedder(merge: bool) -> Embedder:
        return Embedder(
            str(tokenizer_dir), "prompteol", dtype="float32", quantization="nf4", adapter=adapter,
            merge_adapter=merge,
        )  # fmt: skip

    on_4bit = embedder(False)
    for layer in linear_4bit_layers(on_4bit.backend.model):
        layer.training = True  # the layout LoRA trained through, on every CPU (see promptlab.finetune.lora)
    expected = on_4bit.encode(sentences)
    merged = embedder(True)
    assert not linear_4bit_layers(merged.backend.model)
    assert merged.describe()["adapter_merged_into"] == "dequantized 4-bit weights"
    np.testing.assert_allclose(merged.encode(sentences), expected, rtol=0, atol=2e-5 * np.abs(expected).max())
    without_adapter = Embedder(str(tokenizer_dir), "prompteol", dtype="float32", quantization="nf4")
    assert np.abs(without_adapter.encode(sentences) - expected).max() > 100 * 2e-5 * np.abs(expected).max()


def test_merging_into_4bit_layers_bitsandbytes_repacked_is_refused(tokenizer_dir):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra (bitsandbytes)")
    from promptlab.backends.quantization import dequantize_4bit_layers

    backend = load_backend("transformers", str(tokenizer_dir), dtype="float32", quantization="nf4")
    # As bitsandbytes marks a layer it repacked on an AVX512-BF16 CPU's first inference forward.
    linear_4bit_layers(backend.model)[0].weight.quant_state.packing_format_for_cpu = True
    with pytest.raises(PromptlabError, match="repacked by bitsandbytes .* merge the adapter into a freshly"):
        dequantize_4bit_layers(backend.model)


def test_the_adapter_merge_benchmark_times_a_qlora_adapter_apart_and_merged(
    tmp_path, senteval, tokenizer_dir
):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra (bitsandbytes)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import adapter_merge

    cfg = config(tmp_path, senteval, model=str(tokenizer_dir), quantization="nf4", dtype="float32", steps=2)
    Trainer(cfg, data=TrainingData(TOY)).run(progress=False)
    output = tmp_path / "merge.json"
    argv = [
        "--model",
        str(tokenizer_dir),
        "--adapter",
        str(tmp_path / "run" / "best"),
        "--quantization",
        "nf4",
    ]
    argv += ["--sentences", "6", "--threads", "1", "--data-dir", str(senteval), "--output", str(output)]
    assert adapter_merge.main(argv) == 0
    record = json.loads(output.read_text())
    assert list(record["rows"]) == ["apart", "merged", "base"] and record["sentences"] == 6
    assert all(
        row["sentences_per_second"] > 0 and row["peak_rss_mib"] > 100 for row in record["rows"].values()
    )
    assert record["merged_vs_apart"]["min_cosine"] > 0.999
    assert "| merged |" in output.with_suffix(".md").read_text()


def test_qlora_gradients_are_unchanged_by_a_dev_score(tmp_path, senteval, tokenizer_dir):
    """bitsandbytes repacks a 4-bit weight into an inference-only CPU layout on its first eval forward (on
    AVX512-BF16 CPUs); training through that layout has no autograd kernel, so the gradients that flow
    through the frozen base to lower LoRA layers were silently dropped (zero at layer 0) after the first dev
    score. A model that embedded before training (already repacked) is refused."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra (bitsandbytes)")

    def gradients(before: str) -> dict[str, torch.Tensor]:
        cfg = config(
            tmp_path / before, senteval, model=str(tokenizer_dir), quantization="nf4",
            dtype="float32", lora_dropout=0.0, eval_every=0,
        )  # fmt: skip
        backend = None
        if before == "embedded":  # a backend that embedded (in eval mode) before training starts on it
            backend = load_backend("transformers", str(tokenizer_dir), dtype="float32", quantization="nf4")
            Embedder(backend, "prompteol").encode(["A man is playing a guitar."])
        trainer = Trainer(cfg, backend=backend, data=TrainingData(TOY))
        if before == "dev-score":
            trainer.dev_score()
        trainer.model.train()
        trainer.objective.loss(trainer.batch(0)).backward()
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    fresh_grads = gradients("nothing")
    assert len(fresh_grads) > 4 and all(g.abs().sum() > 0 for n, g in fresh_grads.items() if "lora_B" in n)
    after_dev = gradients("dev-score")  # the same weights, never repacked: the same gradients
    for name, grad in fresh_grads.items():
        torch.testing.assert_close(after_dev[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    functional = pytest.importorskip("bitsandbytes.functional")
    if getattr(functional, "has_avx512bf16", lambda: False)():  # the CPUs where bitsandbytes repacks
        with pytest.raises(PromptlabError, match="repacked by bitsandbytes for inference .* freshly loaded"):
            gradients("embedded")


def test_loading_a_4bit_model_runs_no_forward_that_would_repack_it(tokenizer_dir):
    """Building an embedder probes the model (is it causal?) before any training; on AVX512-BF16 CPUs an
    eval-mode no-grad forward through a 4-bit layer repacks it for inference and makes QLoRA refuse the
    model. Checked on any CPU by what the layers see: every probe forward reaches them in train mode."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs the [quant] extra (bitsandbytes)")
    from promptlab.backends.quantization import linear_4bit_layers, repacked_for_inference

    backend = load_backend("transformers", str(tokenizer_dir), dtype="float32", quantization="nf4")
    layers = linear_4bit_layers(backend.model)
    seen: list[bool] = []
    for layer in layers:
        layer.register_forward_pre_hook(lambda module, _: seen.append(module.training))
    Embedder(backend, "prompteol")  # a next-token template: asks whether the model attends both ways
    assert len(seen) >= 3 * len(layers) and all(seen)  # three probe forwards, none in the inference layout
    assert not any(layer.training for layer in layers)  # eval mode restored for embedding
    assert not any(repacked_for_inference(layer) for layer in layers)


# --------------------------------------------------------------------------- the CLI, end to end


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A saved tiny LLaMA with hidden size 64 (bitsandbytes' 4-bit blocks need at least 64 inputs)."""
    folder = tmp_path_factory.mktemp("tiny-llama-64")
    save_tiny_llama_64(folder)
    return folder


def test_cli_finetune_then_eval_with_adapter(tmp_path, senteval, tiny_llama_dir, capsys):
    from promptlab.cli import main

    (tmp_path / "pairs.csv").write_text(
        "sent0,sent1,hard_neg\n" + "".join(f"{e.anchor},{e.positive},x\n" for e in TOY)
    )
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'model = "{tiny_llama_dir}"\noutput_dir = "{tmp_path / "run"}"\ndata = ["{tmp_path / "pairs.csv"}"]\n'
        f'data_dir = "{senteval}"\nsteps = 2\nbatch_size = 4\neval_every = 1\ndtype = "float32"\n'
    )
    assert main(["finetune", str(toml), "--set", "lr=0.01", "--no-progress"]) == 0
    assert "best STS-B dev" in capsys.readouterr().err
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log] == ["start", "step", "eval", "step", "eval", "end"]
    assert log[0]["config"]["lr"] == 0.01 and log[0]["data"]["holdout"] == {"mode": "pairs", "dropped": 0}
    args = ["eval", "--model", str(tiny_llama_dir), "--tasks", "STSBenchmark", "--data-dir", str(senteval)]
    assert main([*args, "--adapter", str(tmp_path / "run" / "best")]) == 0
    assert "STSB" in capsys.readouterr().out
    assert main(["finetune", str(toml)]) == 2  # output_dir taken
    assert "pass --resume" in capsys.readouterr().err


def test_an_adapter_trained_with_a_demonstration_loads_with_it(tmp_path, senteval, tiny_llama_dir):
    (tmp_path / "pairs.csv").write_text("sent0,sent1\n" + "".join(f"{e.anchor},{e.positive}\n" for e in TOY))
    cfg = config(
        tmp_path, senteval, model=str(tiny_llama_dir), data=[str(tmp_path / "pairs.csv")], steps=2,
        eval_every=0, dtype="float32", demonstration="eol-opt-125m",
    )  # fmt: skip
    Trainer(cfg).run(progress=False)
    best = tmp_path / "run" / "best"
    loaded = Embedder.load(str(best))  # the adapter folder alone: model, template, demonstration, layer
    assert loaded.template.name == "prompteol+eol-opt-125m"
    sentences = [e.anchor for e in TOY]
    given = Embedder(
        str(tiny_llama_dir), "prompteol", dtype="float32", demonstration="eol-opt-125m", adapter=str(best)
    )
    np.testing.assert_allclose(loaded.encode(sentences), given.encode(sentences), atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- slow: a real encoder and data

REAL = Path(__file__).resolve().parents[2] / "shared/data/senteval"


@pytest.mark.slow
def test_real_minilm_promptbert_run_and_adapter_round_trip(tmp_path):
    import os

    data_dir = Path(os.environ.get("PROMPTLAB_DATA") or REAL)
    cfg = FinetuneConfig(
        model="minilm-l6", output_dir=str(tmp_path / "run"),
        template="promptbert", template2="promptbert-view2", objective="two_template", denoise=True,
        dtype="float32", data=["sick-train"], data_dir=str(data_dir),
        max_examples=64, batch_size=16, steps=3, eval_every=0, dev_pairs=60, num_threads=2,
    )  # fmt: skip
    trainer = Trainer(cfg)
    assert trainer.data.report["holdout"]["mode"] == "sentences" and len(trainer.data) == 64
    result = trainer.run(progress=False)
    assert result.steps == 3 and math.isfinite(result.best_dev)
    sentences = ["A man is playing a guitar.", "A woman slices an onion."]
    trainer.model.eval()
    expected = trainer.view.encode(sentences)
    loaded = Embedder("minilm-l6", "promptbert", dtype="float32", adapter=str(tmp_path / "run" / "best"))
    np.testing.assert_allclose(loaded.encode(sentences), expected, atol=1e-5, rtol=1e-5)

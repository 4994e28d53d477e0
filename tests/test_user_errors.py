"""Mistakes a user can make, driven through the CLI as a user makes them: one line, exit 2, no traceback.

Devices this torch cannot use, broken LoRA adapter folders, a ``.gguf`` that is no GGUF, config values of
the wrong type (caught before any model loads), and ``--merge-adapter`` without an adapter.
"""

from __future__ import annotations

import copy
import json

import pytest

from promptlab.cli import main


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_CACHE", str(tmp_path / "cache"))


def error_of(argv: list[str], capsys) -> str:
    """The one error line `main` prints for ``argv`` (and exit status 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("promptlab: error:"), err
    return lines[0]


@pytest.fixture
def sentences(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("The cat sits.\nA dog runs.\n", encoding="utf-8")
    return path


def embed_argv(model, sentences, tmp_path, *extra: str) -> list[str]:
    return [
        "embed",
        "--model",
        str(model),
        "--input",
        str(sentences),
        "--output",
        str(tmp_path / "v.npy"),
        *extra,
    ]


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", "unknown device 'tpu'; use cpu, cuda"),
        ("gpu0", "unknown device 'gpu0'"),
        ("xla", "unknown device"),
    ],
)
def test_unknown_device(tiny_llama_dir, sentences, tmp_path, capsys, device, message):
    assert message in error_of(embed_argv(tiny_llama_dir, sentences, tmp_path, "--device", device), capsys)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_torch_without_cuda(tiny_llama_dir, sentences, tmp_path, capsys, monkeypatch, device):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what a CPU-only build answers
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    line = error_of(embed_argv(tiny_llama_dir, sentences, tmp_path, "--device", device), capsys)
    assert f"device '{device}': this torch" in line and "finds no CUDA GPU" in line and "--device cpu" in line


def test_a_gpu_index_that_does_not_exist(tiny_llama_dir, sentences, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    line = error_of(embed_argv(tiny_llama_dir, sentences, tmp_path, "--device", "cuda:2"), capsys)
    assert "there are only 2 CUDA GPU(s) (cuda:0..1)" in line


# --------------------------------------------------------------------------- adapters


@pytest.fixture
def adapter(tiny_llama, tmp_path):
    """A LoRA adapter saved by peft for the tiny LLaMA (the model is copied: peft injects in place)."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(copy.deepcopy(tiny_llama[0]), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    return folder


def test_a_sound_adapter_loads(tiny_llama_dir, sentences, tmp_path, adapter):
    with pytest.warns(UserWarning, match="cannot check that it was trained on this model"):
        assert main(embed_argv(tiny_llama_dir, sentences, tmp_path, "--adapter", str(adapter))) == 0


def test_adapter_config_without_peft_type(tiny_llama_dir, sentences, tmp_path, capsys, adapter):
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    del config["peft_type"]
    config_path.write_text(json.dumps(config))
    line = error_of(embed_argv(tiny_llama_dir, sentences, tmp_path, "--adapter", str(adapter)), capsys)
    assert f"{config_path} has no peft_type" in line and "save_pretrained" in line


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"adapter_config.json": "{not json"}, "adapter_config.json is not valid JSON"),
        ({"adapter_config.json": '{"peft_type": "IA3"}'}, "peft_type 'IA3' is not 'LORA'"),
        (
            {"adapter_model.safetensors": "garbage garbage"},
            "adapter_model.safetensors is not a readable safetensors",
        ),
        ({"adapter_model.safetensors": None}, "has no adapter weights"),
        ({"promptlab_adapter.json": "{"}, "promptlab_adapter.json is not valid JSON"),
    ],
)
def test_broken_adapter_folder(tiny_llama_dir, sentences, tmp_path, capsys, adapter, change, message):
    for name, text in change.items():
        if text is None:
            (adapter / name).unlink()
        else:
            (adapter / name).write_text(text)
    assert message in error_of(
        embed_argv(tiny_llama_dir, sentences, tmp_path, "--adapter", str(adapter)), capsys
    )


def test_adapter_weights_of_other_shapes(tiny_llama_dir, sentences, tmp_path, capsys, adapter):
    # The config says rank 4, the weights were saved at rank 2: peft meets the shapes when it loads them.
    config_path = adapter / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "r": 4}))
    with pytest.warns(UserWarning):
        line = error_of(embed_argv(tiny_llama_dir, sentences, tmp_path, "--adapter", str(adapter)), capsys)
    assert f"peft cannot load the adapter in {adapter} onto this model (RuntimeError: " in line


def test_merge_adapter_needs_an_adapter(tiny_llama_dir, sentences, tmp_path, capsys):
    line = error_of(embed_argv(tiny_llama_dir, sentences, tmp_path, "--merge-adapter"), capsys)
    assert "--merge-adapter) needs an adapter to merge: pass --adapter FOLDER" in line


# --------------------------------------------------------------------------- GGUF


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 a zip file", b"ggu"])
def test_a_gguf_that_is_not_gguf(sentences, tmp_path, capsys, content):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(content)
    line = error_of(embed_argv(fake, sentences, tmp_path), capsys)
    assert f"{fake} is not a GGUF file" in line
    assert "is not a GGUF file" in error_of(["models", "pull", str(fake)], capsys)


# --------------------------------------------------------------------------- config values of the wrong type

FINETUNE_BASE = 'model = "tiny"\noutput_dir = "run"\ndata = ["sick-train"]\nsteps = 2\n'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("data = 5", "data = 5 must be a list of strings"),
        ("template = 7", 'template = 7 must be a string, e.g. "prompteol"'),
        ("lora_r = 2.5", "lora_r = 2.5 must be a whole number, e.g. 8"),
        ('dev_pairs = "20"', 'dev_pairs = "20" must be a whole number, or left out, e.g. 500'),
        ('batch_size = "big"', 'batch_size = "big" must be a whole number, e.g. 32'),
        ('seed = "zero"', 'seed = "zero" must be a whole number, e.g. 0'),
        ('max_length = "long"', 'max_length = "long" must be a whole number, or left out'),
        ("max_length = 0", "max_length = 0 must be a positive number of tokens"),
        ("steps = true", "steps = true must be a whole number"),
        ("layer = true", "layer = true must be a whole number"),
        ("lr = true", "lr = true must be a number"),
        ("denoise = 1", "denoise = 1 must be true or false"),
        ('target_modules = ["q_proj", 3]', 'target_modules = ["q_proj", 3] must be a list of strings'),
    ],
)
def test_finetune_config_of_the_wrong_type(tmp_path, capsys, line, message):
    key = line.split(" =")[0]
    text = "\n".join(row for row in FINETUNE_BASE.splitlines() if not row.startswith(f"{key} ="))
    path = tmp_path / "run.toml"
    path.write_text(f"{text}\n{line}\n", encoding="utf-8")
    # The model "tiny" does not exist: the config is refused before anything tries to load it.
    assert f"finetune config: {message}" in error_of(["finetune", str(path)], capsys)


def test_finetune_override_of_the_wrong_type(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text(FINETUNE_BASE, encoding="utf-8")
    assert 'seed = "zero" must be a whole number' in error_of(
        ["finetune", str(path), "--set", "seed=zero"], capsys
    )


SWEEP_BASE = 'models = ["tiny"]\n[[grid]]\ntemplates = ["prompteol"]\n'


@pytest.mark.parametrize(
    ("top", "grid", "message"),
    [
        ('batch_size = "big"', "", 'batch_size = "big" must be a whole number, or left out, e.g. 64'),
        ("batch_size = true", "", "batch_size = true must be a whole number"),
        ("batch_size = 2.5", "", "batch_size = 2.5 must be a whole number"),
        ('max_length = "long"', "", 'max_length = "long" must be a whole number'),
        ("max_length = 0", "", "max_length = 0 must be positive"),
        ("name = 5", "", "name = 5 must be a string"),
        ("", "layers = [true]", 'layers must be "all" or a list of integers, not [true]'),
        ("", "layers = [1.5]", 'layers must be "all" or a list of integers, not [1.5]'),
        ("", "templates = 7", "templates: expected a non-empty list of names, not 7"),
        ('[data]\nseed = "zero"', "", '[data] seed = "zero" must be a whole number, e.g. 0'),
        ('[data]\ndev_pairs = "20"', "", '[data] dev_pairs = "20" must be a whole number'),
        ("[data]\ndev_pairs = true", "", "[data] dev_pairs = true must be a whole number"),
        ("[data]\nsplit = 3", "", '[data] split = 3 must be a string, e.g. "dev"'),
    ],
)
def test_sweep_config_of_the_wrong_type_fails_check(tmp_path, capsys, top, grid, message):
    lines = SWEEP_BASE.replace(
        'templates = ["prompteol"]',
        grid if grid.startswith("templates") else f'templates = ["prompteol"]\n{grid}',
    )
    path = tmp_path / "sweep.toml"
    # Top-level keys before the first table; [data] after the grid (a table of its own).
    text = f"{top}\n{lines}" if not top.startswith("[data]") else f"{lines}{top}\n"
    path.write_text(text, encoding="utf-8")
    line = error_of(["sweep", str(path), "--output", str(tmp_path / "out.jsonl"), "--check"], capsys)
    assert message in line


def test_a_negative_part_size_is_refused_before_anything_loads(tmp_path, capsys):
    argv = ["eval", "--model", str(tmp_path / "no-such-model"), "--task-log", str(tmp_path / "log.jsonl")]
    message = error_of([*argv, "--part-items", "-1"], capsys)
    assert "--part-items must be 0 (whole tasks) or more, got -1" in message
    assert not (tmp_path / "log.jsonl").exists()

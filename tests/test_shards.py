"""Sharded corpus embedding (`promptlab embed --output DIR/`): shards equal single-process `encode`,
a stopped job resumes without redoing finished shards, a malformed file is named and the rest embedded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import corpus_sentences

from promptlab.cli import main
from promptlab.distributed import shards
from promptlab.embedder import Embedder


def write_corpus(folder, sentences_per_file=(23, 17)):
    """A folder of a .txt file and a .jsonl file (with a blank line, so its line numbers skip one)."""
    folder.mkdir()
    sentences = corpus_sentences(sum(sentences_per_file))
    first, second = sentences[: sentences_per_file[0]], sentences[sentences_per_file[0] :]
    (folder / "a.txt").write_text("\n".join(first) + "\n")
    lines = [json.dumps({"text": s}) for s in second]
    lines.insert(3, "")
    (folder / "b.jsonl").write_text("\n".join(lines) + "\n")
    expected_lines = [list(range(1, len(first) + 1)), [n for n in range(1, len(lines) + 1) if n != 4]]
    return [first, second], expected_lines


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    return Embedder(str(tiny_llama_dir), "prompteol", dtype="float32")


def check_folder(folder, corpus, expected_lines, reference):
    sources, lines, vectors = shards.load_shards(folder)
    expected = np.concatenate([reference.encode(texts) for texts in corpus])
    assert lines.tolist() == [n for file_lines in expected_lines for n in file_lines]
    assert [s.rsplit("/", 1)[-1] for s in sources] == ["a.txt"] * len(corpus[0]) + ["b.jsonl"] * len(
        corpus[1]
    )
    assert vectors.dtype == np.float32 and vectors.shape == expected.shape
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-5)


def test_folder_output_writes_shards_equal_to_encode(tiny_llama_dir, tmp_path, reference, capsys):
    corpus, expected_lines = write_corpus(tmp_path / "corpus")
    out = tmp_path / "vectors"
    argv = [
        "embed",
        "--model",
        str(tiny_llama_dir),
        "--dtype",
        "float32",
        "--input",
        str(tmp_path / "corpus"),
    ]
    assert main([*argv, "--output", f"{out}/", "--shard-size", "5"]) == 0
    check_folder(out, corpus, expected_lines, reference)
    manifest = json.loads((out / shards.MANIFEST).read_text())
    assert len(manifest["shards"]) == 5 + 4 and manifest["failed"] == {} and manifest["dim"] == 32
    assert manifest["shards"]["00001-00000"] == {
        "source": str((tmp_path / "corpus" / "b.jsonl").resolve()),
        "rows": 5,
        "first_line": 1,
        "last_line": 6,
    }
    # A glob of the same files is the same corpus: the rerun finds everything done.
    assert main([*argv[:-1], str(tmp_path / "corpus" / "*"), "--output", str(out), "--shard-size", "5"]) == 0
    assert "wrote 0 shard(s) of 0 sentences" in capsys.readouterr().err


def test_a_stopped_job_resumes_without_redoing_finished_shards(tiny_llama_dir, tmp_path, reference, capsys):
    corpus, expected_lines = write_corpus(tmp_path / "corpus")
    out = tmp_path / "vectors"
    argv = [
        "embed",
        "--model",
        str(tiny_llama_dir),
        "--dtype",
        "float32",
        "--input",
        str(tmp_path / "corpus"),
    ]
    config = {
        "embedder": shards.vector_options(
            {
                "model": str(tiny_llama_dir.resolve()),
                "template": "prompteol",
                "layer": -1,
                "dtype": "float32",
                "pooling": None,
                "max_length": None,
                "normalize_input": None,
                "adapter": None,
                "demonstration": None,
                "backend": "transformers",
                "quantization": None,
            }  # fmt: skip
        ),
        "normalize": False,
        "field": "text",
        "shard_size": 4,
    }
    folder = shards.ShardFolder(out, config, shards.corpus_files(str(tmp_path / "corpus")))

    def stop_after_three(shard):
        if len(folder.records) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shards.embed_shards(reference.encode, folder, shard_size=4, on_shard=stop_after_three)
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.npy")}
    assert len(finished) == 6
    # A shard in flight when the job was killed: its line numbers written, its vectors not.
    np.save(out / "shards" / "00000-00003.lines.npy", np.arange(1, 5))
    (out / "shards" / ".00000-00004.123.tmp.npy").write_bytes(b"partial")

    assert main([*argv, "--output", str(out), "--shard-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "3 shard(s) already in" in err and "3 were already done" in err
    assert "wrote 8 shard(s) of 28 sentences" in err
    for name, mtime in finished.items():
        assert (out / "shards" / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    check_folder(out, corpus, expected_lines, reference)


def test_a_malformed_file_is_named_and_the_others_embedded(tiny_llama_dir, tmp_path, reference, capsys):
    corpus, expected_lines = write_corpus(tmp_path / "corpus")
    (tmp_path / "corpus" / "c.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    out = tmp_path / "vectors"
    argv = [
        "embed",
        "--model",
        str(tiny_llama_dir),
        "--dtype",
        "float32",
        "--input",
        str(tmp_path / "corpus"),
    ]
    assert main([*argv, "--output", f"{out}/", "--shard-size", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "c.jsonl line 2: expected a JSON object with a 'text' field" in err
    assert "the other files were embedded" in err
    check_folder(out, corpus, expected_lines, reference)
    manifest = json.loads((out / shards.MANIFEST).read_text())
    assert list(manifest["failed"]) == [str((tmp_path / "corpus" / "c.jsonl").resolve())]
    # Fixed, the rerun embeds only the file that failed.
    (tmp_path / "corpus" / "c.jsonl").write_text('{"text": "fine"}\n{"text": "now a sentence"}\n')
    assert main([*argv, "--output", f"{out}/", "--shard-size", "8"]) == 2  # the input files changed
    assert "different input files" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "1"], "holds shards of another job (different embedder)"),
        (["--shard-size", "7"], "different shard_size"),
        (["--normalize"], "different normalize"),
    ],
)
def test_resume_with_other_options_is_refused(tiny_llama_dir, tmp_path, capsys, extra, message):
    corpus_dir = tmp_path / "corpus"
    write_corpus(corpus_dir, (6, 4))
    argv = [
        "embed",
        "--model",
        str(tiny_llama_dir),
        "--input",
        str(corpus_dir),
        "--output",
        str(tmp_path / "v"),
    ]
    assert main([*argv, "--shard-size", "5"]) == 0
    capsys.readouterr()
    rerun = [*argv, *extra] if "--shard-size" in extra else [*argv, "--shard-size", "5", *extra]
    assert main(rerun) == 2
    assert message in capsys.readouterr().err
    assert main([*rerun, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("input_", "output", "message"),
    [
        ("-", "v/", "pass --input FILE|DIR|GLOB, not stdin"),
        ("corpus", "v.npy", "names a .npy file, but this job writes shards"),
        ("corpus/*.csv", "v/", "no input files in glob"),
        ("missing", "v/", "input missing does not exist"),
        ("corpus", "full/", "is not empty and holds no manifest.json"),
    ],
)
def test_sharded_embed_user_errors(tiny_llama_dir, tmp_path, monkeypatch, capsys, input_, output, message):
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "corpus", (3, 2))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine\n")
    argv = ["embed", "--model", str(tiny_llama_dir), "--input", input_, "--output", output]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine\n"


def test_a_saved_embedder_folder_embeds_the_corpus(tiny_llama_dir, tmp_path, reference):
    corpus, expected_lines = write_corpus(tmp_path / "corpus", (7, 5))
    saved = tmp_path / "saved"
    reference.save(str(saved))
    out = tmp_path / "vectors"
    argv = ["embed", "--embedder", str(saved), "--input", str(tmp_path / "corpus"), "--output", f"{out}/"]
    assert main(argv) == 0
    check_folder(out, corpus, expected_lines, reference)
    assert json.loads((out / shards.MANIFEST).read_text())["config"]["embedder"] == {"embedder": str(saved)}


def test_a_shard_reported_written_but_not_in_the_folder_is_refused(tmp_path):
    """A worker that wrote its shard to a disk the driver does not see (no shared filesystem) is caught."""
    (tmp_path / "in.txt").write_text("One.\nTwo.\n")
    folder = shards.ShardFolder(tmp_path / "v", {"shard_size": 2}, [tmp_path / "in.txt"])
    shard = next(folder.plan(2, "text"))
    with pytest.raises(shards.PromptlabError, match="filesystem every node shares"):
        folder.mark_written(shard, 4)
    shards.write_shard_files(folder.shards, shard.name, shard.lines, np.ones((2, 4), np.float32))
    folder.mark_written(shard, 4)
    assert list(json.loads((tmp_path / "v" / "manifest.json").read_text())["shards"]) == [shard.name]

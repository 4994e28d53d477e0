"""Sentences as users feed them: text files from any editor, JSONL, stdin; bad bytes named by line."""

from __future__ import annotations

import io

import pytest

from promptlab.errors import PromptlabError
from promptlab.inputs import read_sentences


def test_a_byte_order_mark_is_not_part_of_the_first_sentence(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffA man plays.\r\nA dog runs.\r\n".encode())
    assert read_sentences(str(path)) == ["A man plays.", "A dog runs."]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes('\ufeff{"text": "A man plays."}\n'.encode())
    assert read_sentences(str(jsonl)) == ["A man plays."]


def test_trailing_blank_lines_are_an_editors_not_sentences(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("One.\nTwo.\n\n  \n")
    assert read_sentences(str(path)) == ["One.", "Two."]
    path.write_text("One.\n\nTwo.\n")  # a gap inside would shift every later row of the output
    with pytest.raises(PromptlabError, match=r"in.txt line 2 is empty"):
        read_sentences(str(path))


@pytest.mark.parametrize(
    ("data", "line", "byte"),
    [(b"caf\xe9 au lait\n", 1, 3), (b"fine\nalso fine\nna\xefve\n", 3, 17), (b"ok\n\xff\xfe\n", 2, 3)],
)
def test_non_utf8_input_names_the_line_and_byte(tmp_path, data, line, byte):
    path = tmp_path / "latin1.txt"
    path.write_bytes(data)
    with pytest.raises(PromptlabError) as err:
        read_sentences(str(path))
    message = str(err.value)
    assert f"line {line} is not UTF-8 (byte {byte}: 0x{data[byte]:02x})" in message and "\n" not in message


def test_stdin_is_read_as_bytes_and_named_stdin(monkeypatch):
    class Stdin(io.TextIOWrapper):
        pass

    monkeypatch.setattr("sys.stdin", Stdin(io.BytesIO("\ufeffUne phrase.\n\n".encode())))
    assert read_sentences("-") == ["Une phrase."]
    monkeypatch.setattr("sys.stdin", Stdin(io.BytesIO(b"\xc3(\n")))
    with pytest.raises(PromptlabError, match=r"^stdin line 1 is not UTF-8"):
        read_sentences("-")


@pytest.mark.parametrize(
    ("row", "problem"),
    [('{"text": 5}', "is int"), ('{"text": "  "}', "is empty"), ("[1, 2]", "JSON object"), ("{oops", "JSON")],
)
def test_jsonl_rows_that_are_not_sentences_are_named(tmp_path, row, problem):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "fine"}\n' + row + "\n")
    with pytest.raises(PromptlabError, match=rf"in.jsonl line 2: .*{problem}"):
        read_sentences(str(path))

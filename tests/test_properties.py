"""Property-based tests (hypothesis) of the parsers users feed: whatever the input, it either works or
raises `PromptlabError` (a one-line message for the user), never another exception.

Inputs are template text, template TOML files, sweep and fine-tuning configs (as TOML text and as parsed
tables), demonstration files and sentence inputs (text and JSONL), as raw bytes and as well-formed files
holding values of any type. Where a parse succeeds, what it returns is checked against the input.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptlab.demonstrations import Demonstration, load_demonstrations, with_demonstration
from promptlab.errors import PromptlabError
from promptlab.experiments.sweep import SweepConfig, plan
from promptlab.finetune.config import FinetuneConfig, parse_override
from promptlab.registry import get_template, load_templates

pytestmark = pytest.mark.filterwarnings("ignore")  # a search result file may warn; only errors matter here

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that often holds the pieces parsers look for: slots, masks, quotes, brackets, newlines, a BOM.
PIECES = ["[X]", "[MASK]", "[", "]", '"', "'", "\n", "\r\n", "\t", " ", "\ufeff", "\x00", "é", "\\", "=", "#"]
tricky_text = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=12).map("".join)

# Any value a TOML file (or --set) can hold, nested a little.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    tricky_text,
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=6,
)


def outcome(call):
    """Run ``call``: its result, or None when it raised PromptlabError (any other exception fails the test)."""
    try:
        return call()
    except PromptlabError as err:
        message = str(err)
        assert message.strip(), "an empty error message"
        return None


def toml_value(value) -> str:
    """``value`` written as TOML (None, which TOML lacks, becomes an empty table)."""
    if value is None:
        return "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "inf" if value == math.inf else "-inf" if value == -math.inf else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes (bar lone surrogates)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


_FOLDER = tempfile.TemporaryDirectory(prefix="promptlab-prop-")  # removed when the session ends


def write(data: bytes | str, suffix: str) -> Path:
    """``data`` as the one input file of this module (each example overwrites the last)."""
    path = Path(_FOLDER.name) / f"input{suffix}"
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


# --------------------------------------------------------------------------- templates


@SETTINGS
@given(
    text=tricky_text,
    pooling=st.sampled_from([None, "mean", "cls", "last", "bogus"]),
    sentence=tricky_text,
)
def test_template_text_either_works_or_is_refused(text, pooling, sentence):
    template = outcome(lambda: get_template(text, pooling=pooling))
    if template is None:
        return
    assert "[X]" in template.text
    rendered = outcome(lambda: template.render(sentence, mask_token="<mask>"))
    if rendered is not None:
        # The recorded slot holds the (normalized) sentence.
        assert rendered.text[rendered.slot_start : rendered.slot_end] == rendered.sentence


TEMPLATE_KEYS = ["name", "kind", "text", "paper", "pooling", "normalize", "members", "extra"]
template_rows = st.fixed_dictionaries(
    {
        "name": st.one_of(st.just("t"), values),
        "kind": st.sampled_from(["next_token", "mask", "prefix", "span", "ensemble", "x"]) | values,
    },
    optional={
        "text": st.one_of(tricky_text, values),
        "paper": st.one_of(st.just("p"), values),
        "pooling": st.one_of(st.sampled_from(["mean", "cls"]), values),
        "normalize": values,
        "members": values,
    },
)


@SETTINGS
@given(rows=st.lists(template_rows, min_size=1, max_size=3))
def test_template_files_with_values_of_any_type(rows):
    text = "".join(
        "[[template]]\n" + "".join(f"{key} = {toml_value(v)}\n" for key, v in row.items() if v is not None)
        for row in rows
    )
    outcome(lambda: load_templates(write(text, ".toml")))


@SETTINGS
@given(data=st.binary(max_size=200) | tricky_text.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_template_files_of_any_bytes(data):
    outcome(lambda: load_templates(write(data, ".toml")))


# --------------------------------------------------------------------------- configs

SWEEP_KEYS = ["name", "description", "models", "dtypes", "batch_size", "batch_tokens", "max_length"]
sweep_tables = st.fixed_dictionaries(
    {"models": st.one_of(st.just(["tiny"]), values)},
    optional={
        **{key: values for key in SWEEP_KEYS if key != "models"},
        "dtypes": st.one_of(st.sampled_from([["float32"], ["auto"], "bfloat16"]), values),
        "grid": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "templates": st.one_of(
                            st.sampled_from([["prompteol"], "pcot", ["echo", "nope"]]), values
                        )
                    },
                    optional={
                        "layers": st.one_of(st.sampled_from(["all", [-1], [0, 3], [9]]), values),
                        "demonstrations": st.one_of(
                            st.sampled_from([["none"], ["eol-opt-13b"], "best-of:"]), values
                        ),
                    },
                ),
                max_size=2,
            ),
            values,
        ),
        "data": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "tasks": st.one_of(st.sampled_from(["all", ["STSB"], ["sts12", "sick-r"]]), values),
                    "split": st.one_of(st.sampled_from(["dev", "test", "train"]), values),
                    "dev_pairs": values,
                    "seed": values,
                },
            ),
            values,
        ),
    },
)


@SETTINGS
@given(table=sweep_tables)
def test_sweep_config_tables_either_plan_or_are_refused(table):
    config = outcome(lambda: SweepConfig.from_dict(table, where="prop.toml"))
    if config is not None:
        jobs = outcome(lambda: plan(config, layer_count=lambda model: 3))
        for job in jobs or []:
            assert all(0 <= layer <= 3 for layer in job.layers)


@SETTINGS
@given(
    text=tricky_text
    | st.dictionaries(tricky_text, values, max_size=4).map(
        lambda d: "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in d.items())
    )
)
def test_sweep_config_files_of_any_text(text):
    outcome(lambda: SweepConfig.from_toml(write(text, ".toml")))


FINETUNE_FIELDS = FinetuneConfig.field_names()
VALID_FINETUNE = {"model": "tiny", "output_dir": "run", "data": ["sick-train"], "steps": 3}
# A valid table with up to three keys (known or not) set to values of any type, or removed (None).
finetune_tables = st.dictionaries(
    st.sampled_from([*FINETUNE_FIELDS, "unknown_key"]), st.none() | values, max_size=3
).map(lambda changes: {k: v for k, v in {**VALID_FINETUNE, **changes}.items() if v is not None})


@SETTINGS
@given(table=finetune_tables)
def test_finetune_config_tables_either_validate_or_are_refused(table):
    config = outcome(lambda: FinetuneConfig.from_dict(table))
    if config is not None:  # what passed validation has the declared types
        assert isinstance(config.steps, int | type(None)) and not isinstance(config.steps, bool)
        assert isinstance(config.batch_size, int) and config.batch_size >= 2
        assert all(isinstance(source, str) for source in config.data)


@SETTINGS
@given(text=tricky_text, overrides=st.lists(tricky_text, max_size=3))
def test_finetune_config_files_and_overrides_of_any_text(text, overrides):
    parsed = [outcome(lambda o=o: parse_override(o)) for o in overrides]
    outcome(lambda: FinetuneConfig.from_toml(write(text, ".toml"), dict(p for p in parsed if p)))


# --------------------------------------------------------------------------- demonstrations

demo_rows = st.one_of(
    values,
    st.fixed_dictionaries(
        {
            "id": st.one_of(st.just("d1"), values),
            "sentence": st.one_of(tricky_text, values),
            "word": st.one_of(st.just("Word"), tricky_text, values),
        },
        optional={"source": values, "eval_overlap": values, "file": values},
    ),
)


@SETTINGS
@given(rows=st.lists(demo_rows, max_size=4), blank=st.booleans())
def test_demonstration_files_with_rows_of_any_shape(rows, blank):
    text = ("\n" if blank else "").join(json.dumps(row) + "\n" for row in rows)
    demos = outcome(lambda: load_demonstrations(write(text, ".jsonl")))
    for demo in demos or []:
        assert isinstance(demo, Demonstration) and demo.sentence.strip() and " " not in demo.word
        # A valid demonstration always makes a valid template with a one-word template.
        assert "[X]" in with_demonstration(get_template("prompteol"), demo).text


@SETTINGS
@given(data=st.binary(max_size=200))
def test_demonstration_files_of_any_bytes(data):
    outcome(lambda: load_demonstrations(write(data, ".jsonl")))


# --------------------------------------------------------------------------- sentence inputs

inputs = pytest.importorskip("promptlab.inputs")


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_sentence_inputs_of_any_bytes(data, suffix):
    sentences = outcome(lambda: inputs.read_sentences(str(write(data, suffix))))
    for sentence in sentences or []:
        assert isinstance(sentence, str) and sentence.strip()


line_text = st.text(
    st.characters(
        blacklist_categories=("Cs",), blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    ),
    min_size=1,
).filter(str.strip)


@SETTINGS
@given(
    sentences=st.lists(line_text, min_size=1, max_size=6),
    bom=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    trailing=st.integers(0, 2),
)
def test_text_inputs_round_trip(sentences, bom, newline, trailing):
    text = ("\ufeff" if bom else "") + newline.join(sentences) + newline * trailing
    assert inputs.read_sentences(str(write(text, ".txt"))) == sentences


@SETTINGS
@given(
    sentences=st.lists(st.text(min_size=1).filter(str.strip), min_size=1, max_size=6),
    field=tricky_text.filter(bool),
)
def test_jsonl_inputs_round_trip(sentences, field):
    text = "".join(json.dumps({field: s, "other": 1}) + "\n" for s in sentences)
    assert inputs.read_sentences(str(write(text, ".jsonl")), field=field) == sentences

"""Templates and the registry: validation, rendering rules, lookups with suggestions."""

from __future__ import annotations

import pytest

from promptlab.errors import PromptlabError
from promptlab.registry import Registry, get_template, list_templates, load_templates
from promptlab.templates import Template


def test_registry_has_the_paper_templates():
    names = {t.name: t for t in list_templates()}
    assert names["promptbert"].text == 'This sentence : "[X]" means [MASK] .'
    assert names["promptbert-view2"].text == 'This sentence of "[X]" means [MASK] .'
    assert names["prompteol"].text == 'This sentence : "[X]" means in one word:"'
    assert names["prompteol"].kind == "next_token" and names["prompteol"].pooling == "next_token"
    assert names["e5-query"].text == "query: [X]" and names["bge-query"].pooling == "cls"
    assert names["none"].text == "[X]"
    assert {"promptbert-roberta", "promptbert-roberta-view2", "instructor"} <= set(names)
    assert all(t.paper for t in names.values()), "every template cites where it comes from"


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("A man is smoking", 'This sentence : "A man is smoking." means in one word:"'),
        ("Is it?", 'This sentence : "Is it?" means in one word:"'),
        ('He said "hi"', 'This sentence : "He said \'hi\'" means in one word:"'),
        ('a "b" c', 'This sentence : "a \'b\' c." means in one word:"'),
    ],
)
def test_prompteol_normalisation(sentence, expected):
    assert get_template("prompteol").render(sentence).text == expected


def test_normalisation_can_be_switched_off_and_single_quoted_slot_keeps_double_quotes():
    t = Template("t", "next_token", 'S : "[X]" means:"', normalize=False)
    assert t.render('a "b"').text == 'S : "a "b"" means:"'
    roberta = get_template("promptbert-roberta")
    assert roberta.slot_quote == "'"
    assert roberta.render('say "x"', "<mask>").text == "This sentence : ' say \"x\" ' means <mask>."


def test_render_records_the_slot_span():
    r = get_template("promptbert").render("Dogs run", "[MASK]")
    assert r.text[r.slot_start : r.slot_end] == "Dogs run."


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "next_token", "text": "no slot here"}, "exactly one sentence slot"),
        ({"kind": "next_token", "text": "[X] and [X]"}, "exactly one sentence slot"),
        ({"kind": "mask", "text": "[X] means nothing"}, "needs exactly one [MASK]"),
        ({"kind": "next_token", "text": "[X] means [MASK]"}, "only belongs in a 'mask' template"),
        ({"kind": "sideways", "text": "[X]"}, "kind 'sideways' is not one of"),
        ({"kind": "prefix", "text": "[X]", "pooling": "median"}, "pooling 'median'"),
        ({"kind": "mask", "text": "[X] [MASK]", "pooling": "mean"}, "read at one position"),
    ],
)
def test_invalid_templates_are_refused(kwargs, message):
    with pytest.raises(PromptlabError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Template(name="bad", **kwargs)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(PromptlabError, match="Did you mean: prompteol"):
        get_template("prompteal")


def test_literal_text_makes_an_adhoc_template_and_text_without_slot_is_refused():
    assert get_template('In one word, "[X]" is:"').kind == "next_token"
    assert get_template("[X] means [MASK] .").kind == "mask"
    with pytest.raises(PromptlabError, match="no sentence slot"):
        get_template("This sentence means in one word:")


def test_pooling_override_only_for_prefix_templates():
    assert get_template("none", pooling="cls").pooling == "cls"
    with pytest.raises(PromptlabError, match="needs a 'prefix' template"):
        get_template("prompteol", pooling="mean")


def test_duplicate_names_and_bad_files_are_refused(tmp_path):
    t = Template("same", "next_token", "[X]:")
    with pytest.raises(PromptlabError, match="duplicate template name 'same'"):
        Registry([t, t])
    bad = tmp_path / "bad.toml"
    bad.write_text('[[template]]\nname = "x"\nkind = "mask"\ntext = "[X]"\ncolour = "red"\n')
    with pytest.raises(PromptlabError, match="unknown key"):
        load_templates(bad)
    bad.write_text('[[template]]\nname = "x"\nkind = "mask"\ntext = "[X] no mask"\n')
    with pytest.raises(PromptlabError, match=r"bad.toml.*\[MASK\]"):
        load_templates(bad)


def test_registry_does_not_import_torch():
    import subprocess
    import sys

    code = "import promptlab, promptlab.registry, sys; promptlab.registry.list_templates(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

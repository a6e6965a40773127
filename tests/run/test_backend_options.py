"""`--model-option KEY=VALUE`: the one place where flags become backend options (issue 19)."""

from __future__ import annotations

import json

import pytest

from refcal.cli import main
from refcal.errors import InputError
from refcal.run.backend_options import backend_options, parse_model_options

FLAGS = {"batch_size": 4, "device": None, "dtype": None, "letters": None}


def test_values_are_json_when_they_parse():
    assert parse_model_options(["scale=3", "chat.bias=[0.8, 0]", "base.name=x y", "flag=true"]) == \
        {"scale": 3, "chat.bias": [0.8, 0], "base.name": "x y", "flag": True}
    for bad in ("scale", "=3", "other.scale=1", "chat.=1"):
        with pytest.raises(InputError, match="is not KEY=VALUE"):
            parse_model_options([bad])


def test_options_go_where_the_backend_has_them():
    opts = parse_model_options(["scale=2", "chat.bias=[1.0]", "timeout=9"])
    assert backend_options("fake:c", "chat", flags=FLAGS, model_options=opts) == {"scale": 2, "bias": [1.0]}
    assert backend_options("fake:b", "base", flags=FLAGS, model_options=opts) == {"scale": 2}
    assert backend_options("openai:m", "base", flags={**FLAGS, "letters": "topk"}, model_options=opts) == \
        {"letters": "topk", "timeout": 9}  # batch_size, scale: not options of an API model
    with pytest.raises(InputError, match="option 'timeout' does not apply to"):
        backend_options("fake:c", "chat", flags=FLAGS, model_options={"chat.timeout": 1})


def test_run_refuses_an_option_no_model_has(tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}?", "choices": ["a", "b"], "answer": i % 2}) + "\n"
                            for i in range(10)))
    for opt, what in (("scael=3", "applies to none of the models"), ("chat.scael=3", "option 'scael' does not apply")):
        assert main(["run", "--base", "fake:b", "--chat", "fake:c", "-d", str(data), "--model-option", opt,
                     "-o", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert what in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "r").exists()

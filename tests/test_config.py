"""Typed configs map one-to-one to flags and YAML keys."""

from __future__ import annotations

import argparse

import pytest

from pocketlm.cli import GenerateOptions, build_parser
from pocketlm.config import add_arguments, from_namespace, load_yaml
from pocketlm.errors import UserError
from pocketlm.inference.engine import SamplingConfig
from pocketlm.train.pretrain import PretrainConfig


def test_repeated_list_flags_accumulate_and_defaults_hold():
    p = argparse.ArgumentParser()
    add_arguments(p, GenerateOptions)
    add_arguments(p, SamplingConfig)
    ns = p.parse_args(["m", "--prompt", "a", "--prompt", "b", "c", "--temperature", "0", "--no-stream"])
    opts, samp = from_namespace(GenerateOptions, ns), from_namespace(SamplingConfig, ns)
    assert opts.prompt == ["a", "b", "c"] and opts.stream is False and opts.model == "m"
    assert samp.temperature == 0 and samp.top_k == 50 and samp.stop == []


def test_yaml_recipe_and_flags_fill_the_same_config(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("data: d\nout: o\nmax-steps: 5\nlr: 0.002\nschedule: wsd\n")
    ns = build_parser().parse_args(["pretrain", "--config", str(y), "--lr", "0.01"])
    cfg = from_namespace(PretrainConfig, ns, load_yaml(PretrainConfig, y))
    assert (cfg.data, cfg.out, cfg.max_steps, cfg.lr, cfg.schedule) == ("d", "o", 5, 0.01, "wsd")
    y.write_text("data: d\nout: o\nmax_stepz: 5\n")
    with pytest.raises(UserError, match="unknown option.*max_stepz"):
        load_yaml(PretrainConfig, y)


def test_every_verb_has_help(capsys):
    parser = build_parser()
    for verb in ["prepare", "models", "pretrain", "finetune", "merge", "eval", "compare", "report", "run",
                 "generate", "chat", "export"]:
        with pytest.raises(SystemExit) as e:
            parser.parse_args([verb, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage: pocketlm " + verb in out and len(out) > 200


def test_missing_positional_is_named_as_an_argument_not_a_flag(capsys):
    from pocketlm.cli import main
    assert main(["prepare", "--out", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert "INPUTS" in err and "--inputs" not in err


@pytest.mark.parametrize("line, message", [
    ("lr: [0.001]", r"lr: \[0.001\] is not a number"),
    ("batch_size: 16.5", "batch-size: 16.5 is not a whole number"),
    ("schedule: linear", "schedule: 'linear' is not one of cosine, wsd, constant"),
    ("compile: maybe", "compile: 'maybe' is not true or false"),
])
def test_a_wrong_value_in_yaml_is_one_line_naming_the_key(tmp_path, line, message):
    y = tmp_path / "run.yaml"
    y.write_text(f"data: d\nout: o\nmax_steps: 5\n{line}\n")
    with pytest.raises(UserError, match=message) as e:
        load_yaml(PretrainConfig, y)
    assert str(y) in str(e.value) and "\n" not in str(e.value)


def test_yaml_values_are_converted_to_the_field_types(tmp_path):
    # YAML 1.1 reads 3e-4 (no dot) as a string; it reached torch's AdamW as one and failed with a TypeError
    y = tmp_path / "run.yaml"
    y.write_text("data: d\nout: o\nlr: 3e-4\nbatch_size: '16'\nmax_time: 600\ncompile: 'false'\n")
    cfg = load_yaml(PretrainConfig, y)
    assert (cfg.lr, cfg.batch_size, cfg.max_time, cfg.compile) == (3e-4, 16, "600", False)
    assert isinstance(cfg.lr, float) and isinstance(cfg.batch_size, int)


def test_the_cli_reports_a_bad_yaml_value_without_a_traceback(tmp_path, capsys):
    from pocketlm.cli import main
    y = tmp_path / "run.yaml"
    y.write_text(f"data: {tmp_path}\nout: {tmp_path / 'o'}\nmax_steps: [1, 2]\n")
    assert main(["pretrain", "--config", str(y)]) == 2
    err = capsys.readouterr().err.strip()
    assert "max-steps: [1, 2] is not a whole number" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_help_and_option_checks_do_not_import_the_heavy_libraries():
    # `pocketlm --help` took 11.7 s on a 2-core machine when the CLI imported torch and transformers at start-up
    import subprocess
    import sys
    code = ("import sys\nfrom pocketlm.cli import build_parser\nfrom pocketlm.config import make\n"
            "from pocketlm.train.options import PretrainConfig\nbuild_parser()\n"
            "make(PretrainConfig, {'data': 'd', 'out': 'o', 'lr': '3e-4'})\n"
            "print(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

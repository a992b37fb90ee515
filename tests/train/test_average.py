"""`--ema`: the exponential moving average of the weights, by hand and in real training runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pocketlm.errors import UserError
from pocketlm.runs import latest_checkpoint
from pocketlm.train.average import WeightAverage
from pocketlm.train.checkpoint import load_state
from pocketlm.train.pretrain import PretrainConfig, pretrain

COMMON = dict(model="nano-1m", context=64, batch_size=4, warmup_steps=5, eval_interval=4, eval_batches=2,
              progress=False, dtype="fp32", log_interval=2)


def test_average_matches_hand_computation():
    layer = torch.nn.Linear(2, 1, bias=False)
    frozen = torch.nn.Linear(2, 1, bias=False).requires_grad_(False)
    model = torch.nn.Sequential(layer, frozen)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    avg = WeightAverage(model, 0.9)
    assert len(avg.average) == 1  # frozen weights are not averaged
    expected = torch.ones(1, 2)
    for step, value in enumerate([3.0, -1.0, 5.0, 2.0], 1):
        with torch.no_grad():
            layer.weight.fill_(value)
        avg.update(step)
        d = min(0.9, (1 + step) / (10 + step))  # warm-up of the decay
        expected = d * expected + (1 - d) * value
        assert torch.allclose(avg.average[0], expected, atol=1e-6)
    with avg.swapped_in():
        assert torch.allclose(layer.weight, expected)
    assert torch.equal(layer.weight, torch.full((1, 2), 2.0))  # raw weights back after the block
    avg.copy_to_model()
    assert torch.allclose(layer.weight, expected)


def test_final_model_is_the_average_and_resume_keeps_it(shop_data, tmp_path):
    # a constant learning rate after warm-up, so that a 6-step run is the first half of the 12-step one
    cfg = dict(data=str(shop_data), ema=0.9, schedule="constant", **COMMON)
    pretrain(PretrainConfig(out=str(tmp_path / "full"), max_steps=12, **cfg))
    # the same run stopped at step 6, then resumed to 12
    pretrain(PretrainConfig(out=str(tmp_path / "split"), max_steps=6, **cfg))
    pretrain(PretrainConfig(out=str(tmp_path / "split"), max_steps=12, resume=True, **cfg))

    final = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    raw = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))  # the last step's own weights
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(final[name], raw[name]), "the final model should be the average, not the last step"
    state = load_state(latest_checkpoint(tmp_path / "full"))
    assert len(state["ema"]) == len(final) - ("lm_head.weight" in final)
    resumed = load_file(str(tmp_path / "split" / "model" / "model.safetensors"))
    assert all(torch.equal(final[k], resumed[k]) for k in final), "resumed average differs from the uninterrupted one"


def test_validation_uses_the_average(shop_data, tmp_path):
    """The validation loss the run reports is the loss of the model it saves: the average."""
    from pocketlm.data.shards import load_tokens
    from pocketlm.model.io import load_model
    from pocketlm.train.batches import TokenWindows
    from pocketlm.train.objectives import mean_loss
    s = pretrain(PretrainConfig(data=str(shop_data), out=str(tmp_path / "r"), max_steps=8, ema=0.9, **COMMON))
    model, _ = load_model(str(tmp_path / "r"), device=torch.device("cpu"))
    windows = TokenWindows(load_tokens(shop_data, "val"), COMMON["batch_size"], COMMON["context"], 1337,
                           torch.device("cpu"))
    with torch.no_grad():
        loss = mean_loss(model.eval(), windows.eval_batches(COMMON["eval_batches"]))
    assert loss == pytest.approx(s["val_loss"], abs=1e-5)


def test_bad_decay_is_a_clear_error(shop_data, tmp_path):
    with pytest.raises(UserError, match="--ema"):
        pretrain(PretrainConfig(data=str(shop_data), out=str(tmp_path / "r"), max_steps=2, ema=1.0, **COMMON))


def test_flag_on_the_command_line():
    from pocketlm.cli import build_parser
    parser = build_parser()
    for verb in ("pretrain", "finetune"):
        args = parser.parse_args([verb, "--data", "d", "--out", "o", "--ema", "0.995"]
                                 + (["--base", "b"] if verb == "finetune" else []))
        assert args.ema == 0.995


def test_average_started_on_resume_starts_from_the_resumed_weights(tiny_run, tmp_path):
    from pocketlm.train.finetune import FinetuneConfig, finetune
    shop = Path(__file__).resolve().parents[2] / "examples" / "shop"
    cfg = dict(base=str(tiny_run), data=[str(shop / "faq.jsonl")], out=str(tmp_path / "ft"), prompt_field="question",
               completion_field="answer", lr=1e-2, schedule="constant", warmup_steps=2, context=192, batch_size=8,
               progress=False, eval_batches=2, dtype="fp32", eval_at_start=False)
    finetune(FinetuneConfig(max_steps=20, **cfg))
    trained = load_file(str(tmp_path / "ft" / "checkpoint" / "model.safetensors"))
    finetune(FinetuneConfig(max_steps=22, resume=True, ema=0.99, **cfg))
    average = load_file(str(tmp_path / "ft" / "model" / "model.safetensors"))
    base = load_file(str(tiny_run / "model" / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    # two steps past the resumed weights, not pulled back towards the base the run started from
    assert (average[name] - trained[name]).norm() < 0.5 * (average[name] - base[name]).norm()

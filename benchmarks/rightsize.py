"""`pocketlm rightsize` on the demo model, SmolLM2-135M-Instruct and two task models: which form to ship.

    python benchmarks/rightsize.py                  # all four (~20 min on two cores)
    python benchmarks/rightsize.py --models small   # the demo model only (under a minute)

`shopbot` is the demo's fine-tuned shop bot (runs/demo/bot) with the facts task on the bundled held-out
paraphrases; `banking77` is a quick run of the BANKING77 recipe, made first with
`pocketlm run recipes/intents-banking77-scratch.yaml --set pretrain_time=3m --set steps=400 --set eval_limit=300
--set out=runs/bench/banking77-quick`, with the classification task on 300 of its held-out queries.

Runs the same code as `pocketlm rightsize MODEL --data TEXT --out runs/bench/rightsize-NAME` (every GGUF type
of its default ladder and int8 for PyTorch, each measured against the model on the same held-out tokens) and
keeps the figures in benchmarks/results/rightsize.json, paths made relative. A model whose
runs/bench/rightsize-NAME/rightsize.json exists with the same settings is read back instead of measured again
(delete the directory to measure anew). Models and data as benchmarks/quantize.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, TINYSTORIES_VALID, machine, relative, save_result, shared_data, tinystories_valid  # noqa: E402

SETTINGS = {"small": {"max_tokens": 4096, "max_loss_increase": 1.0},
            "135m": {"max_tokens": 1024, "max_loss_increase": 5.0},
            "shopbot": {"max_tokens": 4096, "max_loss_increase": 1.0},
            "banking77": {"max_tokens": 4096, "max_loss_increase": 1.0}}
SHOP = REPO / "examples" / "shop"
B77 = REPO / "runs" / "bench" / "banking77-quick"  # pocketlm run recipes/intents-banking77-scratch.yaml, see --help


def task_setup(name: str, data_root: Path | None):
    """(model, perplexity data, TaskOptions, task data) of the task models, or None when absent."""
    from pocketlm.evaluate.options import TaskOptions
    if name == "shopbot":
        return (REPO / "runs" / "demo" / "bot", str(REPO / "runs" / "demo" / "data"),
                TaskOptions(task="facts", prompt_field="question", completion_field="answer", max_new_tokens=64),
                str(SHOP / "faq_heldout.jsonl"))
    if data_root is None:
        return None
    return (B77 / "model", str(B77 / "tokens"),
            TaskOptions(task="classification", prompt_field="text", completion_field="category", max_new_tokens=24,
                        system="Classify the banking customer's query into one intent.", limit=300,
                        labels=[str(data_root / "intents" / "banking77_categories.json")]),
            str(B77 / "data" / "test.jsonl"))


def main(argv=None) -> None:
    from pocketlm.compress.rightsize import rightsize
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,135m,shopbot,banking77")
    ap.add_argument("--small-model", default=str(REPO / "runs" / "demo" / "run"))
    ap.add_argument("--small-data", default=str(REPO / "runs" / "demo" / "data"))
    ap.add_argument("--hf-model", default=str(REPO / "runs" / "bench" / "smollm2-135m-hf"))
    args = ap.parse_args(argv)
    results = []
    for name in [m.strip() for m in args.models.split(",")]:
        settings, task = dict(SETTINGS[name]), None
        if name in ("shopbot", "banking77"):
            setup = task_setup(name, shared_data())
            if setup is None:
                print(f"skipping {name}: ../shared/data is absent")
                continue
            model, data, task_opts, task_data = setup
            settings.update(task_opts=task_opts, task_data=task_data)
            task = task_opts.task
        elif name == "small":
            model, data = Path(args.small_model), args.small_data
        else:
            model = Path(args.hf_model)
            data = tinystories_valid(REPO / "runs" / "bench" / "tinystories-valid-400k.txt")
            if data is None:
                continue
        if not model.exists():
            print(f"skipping {name}: {relative(model)} is missing (make demo; benchmarks/serve_load.py makes the 135M)")
            continue
        out = REPO / "runs" / "bench" / f"rightsize-{name}"
        saved = out / "rightsize.json"
        r = json.loads(saved.read_text()) if saved.exists() else None
        if r is None or r["tokens"] > settings["max_tokens"] or r["budget"].get("task") != task or \
                r["budget"]["max_loss_increase"] != settings["max_loss_increase"]:
            r = rightsize(str(model), str(out), data, **settings)
        for key in ("model", "data", "path", "task_data"):
            r[key] = relative(Path(r[key])) if r.get(key) else r.get(key)
        r["reference"]["path"] = relative(Path(r["reference"]["path"]))
        for c in r["candidates"]:
            c["path"] = relative(Path(c["path"])) if c.get("path") else None
        if r["command"]:
            r["command"] = r["command"].replace(str(REPO) + "/", "")
        if name == "135m":
            r["data"] = TINYSTORIES_VALID
        r["name"] = name
        results.append(r)
        save_result("rightsize", {"machine": machine(), "models": results})
    print("done")


if __name__ == "__main__":
    main()

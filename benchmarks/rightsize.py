"""`pocketlm rightsize` on the demo model and SmolLM2-135M-Instruct: which quantized form to ship.

    python benchmarks/rightsize.py                  # both (~10 min on two cores)
    python benchmarks/rightsize.py --models small   # the demo model only (under a minute)

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
from common import REPO, machine, relative, save_result, shared_data  # noqa: E402

SETTINGS = {"small": {"max_tokens": 4096, "max_loss_increase": 1.0},
            "135m": {"max_tokens": 1024, "max_loss_increase": 5.0}}


def main(argv=None) -> None:
    from pocketlm.compress.rightsize import rightsize
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,135m")
    ap.add_argument("--small-model", default=str(REPO / "runs" / "demo" / "run"))
    ap.add_argument("--small-data", default=str(REPO / "runs" / "demo" / "data"))
    ap.add_argument("--hf-model", default=str(REPO / "runs" / "bench" / "smollm2-135m-hf"))
    args = ap.parse_args(argv)
    results = []
    for name in [m.strip() for m in args.models.split(",")]:
        settings = SETTINGS[name]
        if name == "small":
            model, data = Path(args.small_model), args.small_data
        else:
            model, root = Path(args.hf_model), shared_data()
            if root is None:
                print("skipping 135m: ../shared/data is absent")
                continue
            data = str(REPO / "runs" / "bench" / "tinystories-valid-400k.txt")
            Path(data).write_text((root / "tinystories" / "valid.txt").read_text(encoding="utf-8")[:400_000],
                                  encoding="utf-8")
        if not model.exists():
            print(f"skipping {name}: {relative(model)} is missing (make demo; benchmarks/serve_load.py makes the 135M)")
            continue
        out = REPO / "runs" / "bench" / f"rightsize-{name}"
        saved = out / "rightsize.json"
        r = json.loads(saved.read_text()) if saved.exists() else None
        if r is None or r["tokens"] > settings["max_tokens"] or \
                r["budget"]["max_loss_increase"] != settings["max_loss_increase"]:
            r = rightsize(str(model), str(out), data, **settings)
        for key in ("model", "data", "path"):
            r[key] = relative(Path(r[key])) if r.get(key) else r.get(key)
        r["reference"]["path"] = relative(Path(r["reference"]["path"]))
        for c in r["candidates"]:
            c["path"] = relative(Path(c["path"])) if c.get("path") else None
        if r["command"]:
            r["command"] = r["command"].replace(str(REPO) + "/", "")
        if name == "135m":
            r["data"] = "../shared/data/tinystories/valid.txt (first 400,000 characters)"
        r["name"] = name
        results.append(r)
        save_result("rightsize", {"machine": machine(), "models": results})
    print("done")


if __name__ == "__main__":
    main()

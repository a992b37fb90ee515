"""A support bot from a real FAQ, scored on questions typed as users type them.

    python benchmarks/bot_faq.py --faq ../shared/data/python_docs/python_faq_qa.json \
        --questions benchmarks/questions/python_faq.jsonl --name python_faq

Builds the bot as `pocketlm bot --faq FILE` does (defaults), then reports:
- retrieval: recall@1 / @5 of the entry that answers each answerable question, for dense (MiniLM), lexical
  (BM25) and fused rankings;
- retrieval alone: the best entry returned verbatim contains the key fact;
- the bot (the excerpt, and the model answering from it): right fact on answerable questions, declined on
  unanswerable in-domain and off-topic ones, latency;
- the threshold trade-off: at other thresholds, answerable kept vs unanswerable declined.
Results go to benchmarks/results/bot_NAME.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save_result, shared_data  # noqa: E402

from pocketlm.bot.answer import Bot, BotConfig  # noqa: E402
from pocketlm.bot.build import BotBuildConfig, build_bot  # noqa: E402
from pocketlm.evaluate.metrics import contains_key  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faq", help="the FAQ file (default: the Python FAQ from ../shared/data)")
    ap.add_argument("--docs", nargs="+", help="build from these documents instead of an FAQ (the questions' "
                    "`entry` is then found in a passage's heading path)")
    ap.add_argument("--questions", default=str(Path(__file__).resolve().parent / "questions" / "python_faq.jsonl"))
    ap.add_argument("--name", default="python_faq")
    ap.add_argument("--out", default="runs/bench/bot")
    ap.add_argument("--id-field", default="id")
    ap.add_argument("--modes", default="extract,generate", help="answer modes to score")
    ap.add_argument("--group-field", default=None, help="as pocketlm bot --group-field")
    ap.add_argument("--rerank", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--limit", type=int, default=None, help="score only the first N questions of each kind")
    args = ap.parse_args(argv)
    if args.faq is None and not args.docs:
        data = shared_data()
        if data is None:
            ap.error("no --faq given and ../shared/data (or $POCKETLM_DATA) not found")
        args.faq = str(data / "python_docs" / "python_faq_qa.json")
    run = Path(args.out) / args.name
    t0 = time.perf_counter()
    summary = build_bot(BotBuildConfig(faq=[args.faq] if not args.docs else [], docs=args.docs or [], out=str(run), id_field=args.id_field,
                                                threshold=args.threshold, group_field=args.group_field), progress=False)
    build_s = time.perf_counter() - t0
    questions = [json.loads(line) for line in Path(args.questions).read_text(encoding="utf-8").splitlines() if line]
    for q in questions:  # a plain key file (the shop's held-out questions) has no kind and no entry
        q.setdefault("kind", "answerable" if q["key"] else "unanswerable")
        q.setdefault("entry", "")
    if args.limit:
        by_kind: dict[str, list] = {}
        for q in questions:
            by_kind.setdefault(q["kind"], []).append(q)
        questions = [q for qs in by_kind.values() for q in qs[: args.limit]]
    bot = Bot(run)
    index = bot.index
    ids = {p.id: i for i, p in enumerate(index.passages)}
    titles: dict[str, list[int]] = {}
    for i, p in enumerate(index.passages):
        titles.setdefault(p.title, []).append(i)

    def target(q):
        if args.docs:
            return {i for i, p in enumerate(index.passages) if q["entry"] and q["entry"] in p.title}
        return set(titles.get(q["entry"], [])) | ({ids[q["entry"]]} if q["entry"] in ids else set())

    texts = [q["question"] for q in questions]
    vectors = index.embedding_model.encode(texts)
    dense = index.dense_scores(vectors)
    lexical = np.stack([index.lexical.scores(t) for t in texts])
    rankings = {"dense": np.argsort(-dense, 1)[:, :5], "bm25": np.argsort(-lexical, 1)[:, :5],
                "fused": np.asarray([[h.passage for h in index.fuse(d, lx, 5)]
                                     for d, lx in zip(dense, lexical, strict=True)])}
    answerable = [i for i, q in enumerate(questions) if q["key"]]
    retrieval = {}
    for name, top in rankings.items():
        retrieval[name] = {"recall@1": round(float(np.mean([top[i, 0] in target(questions[i]) for i in answerable])), 4),
                           "recall@5": round(float(np.mean([bool(set(top[i]) & target(questions[i]))
                                                            for i in answerable])), 4)}
        top1 = [index.passages[top[i, 0]] for i in answerable]
        retrieval[name]["verbatim_fact"] = round(float(np.mean(
            [contains_key(f"{p.title}\n{p.text}", questions[i]["key"]) for p, i in zip(top1, answerable, strict=True)])), 4)
    best = dense.max(1)
    kinds = sorted({q["kind"] for q in questions})
    curve = []
    for t in np.round(np.arange(0.2, 0.75, 0.025), 3):
        row = {"threshold": float(t)}
        for k in kinds:
            sel = [i for i, q in enumerate(questions) if q["kind"] == k]
            row["kept" if k == "answerable" else f"declined_{k}"] = round(float(np.mean(
                best[sel] >= t if k == "answerable" else best[sel] < t)), 4)
        curve.append(row)
    modes = {}
    for mode in args.modes.split(","):
        bot.config = BotConfig(**{**bot.config.__dict__, "answer": mode, "rerank": args.rerank})
        rows, lat = [], []
        for q in questions:
            t1 = time.perf_counter()
            a = bot.answer(q["question"])
            if not a.declined:  # a decline costs one embedding; the latency that matters is an answer's
                lat.append(time.perf_counter() - t1)
            ok = (not q["key"] and a.declined) or (bool(q["key"]) and not a.declined and contains_key(a.text, q["key"]))
            rows.append({"kind": q["kind"], "question": q["question"], "key": q["key"], "got": a.text[:100],
                         "declined": a.declined, "ok": ok,
                         "right_passage": a.passage in target(q) if q["key"] else None,
                         "passage_fact": bool(q["key"]) and a.passage is not None and contains_key(
                             f"{index.passages[a.passage].title}\n{index.passages[a.passage].text}", q["key"])})
        res = {k: round(float(np.mean([r["ok"] for r in rows if r["kind"] == k])), 4) for k in kinds}
        res["recall@1_reranked"] = round(float(np.mean([r["right_passage"] for r in rows if r["key"]])), 4)
        res["passage_fact"] = round(float(np.mean([r["passage_fact"] for r in rows if r["key"]])), 4)
        res["answerable_declined"] = round(float(np.mean([r["declined"] for r in rows if r["kind"] == "answerable"])), 4)
        res["latency_p50_s"] = round(float(np.percentile(lat, 50)), 3) if lat else None  # answered questions
        res["latency_p90_s"] = round(float(np.percentile(lat, 90)), 3) if lat else None
        res["misses"] = [r for r in rows if not r["ok"]][:15]
        modes[mode] = res
        print(f"{mode}: " + ", ".join(f"{k} {v}" for k, v in res.items() if k != "misses"), file=sys.stderr)
    result = {"faq": args.faq, "docs": args.docs, "questions": args.questions, "counts": {k: sum(q["kind"] == k for q in questions)
                                                                     for k in kinds},
              "build_seconds": round(build_s, 1), "threshold": summary["threshold"], "retrieval": retrieval,
              "bot": modes, "threshold_curve": curve}
    print(json.dumps({k: v for k, v in result.items() if k not in ("bot", "threshold_curve")}, indent=1))
    print(f"wrote {save_result(f'bot_{args.name}', result)}", file=sys.stderr)


if __name__ == "__main__":
    main()

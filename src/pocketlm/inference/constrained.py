"""Constrained decoding: outputs that cannot fall outside a label set or outside valid JSON.

A constraint picks each next token from the model's scores but only among tokens that keep the
output valid, and says when the output is complete (the engine then stops).
"""

from __future__ import annotations

import json

import torch
from transformers import DynamicCache

from pocketlm.inference.engine import with_cache


class LabelConstraint:
    """The output is exactly one of `labels` (then the stop token)."""

    def __init__(self, tokenizer, labels: list[str], stop_id: int):
        self.stop_id = stop_id
        self.labels = list(dict.fromkeys(labels))
        self.sequences = [list(tokenizer.encode(label, add_special_tokens=False)) + [stop_id]
                          for label in self.labels]

    def choose(self, logits: torch.Tensor, generated: list[int]) -> int:
        n = len(generated)
        allowed = {s[n] for s in self.sequences if len(s) > n and s[:n] == generated}
        if not allowed:
            return self.stop_id
        idx = torch.tensor(sorted(allowed))
        return int(idx[logits[0, idx].argmax()])

    @torch.inference_mode()
    def scores(self, model, prompt_ids: list[int], batch: int = 128) -> torch.Tensor:
        """log P(label, then stop | prompt) for every label, in one pass over the prompt and batched
        passes over the labels from its KV cache. Ranking by these is exact; greedy decoding through the
        label tree (`choose`) can commit to a shared first token ("card_...") whose labels are each less
        likely than another ("top_up_failed")."""
        first, cache = self._prefill(model, prompt_ids)
        every = list(range(len(self.sequences)))
        return torch.cat([self._score(model, first, cache, every[i:i + batch]) for i in range(0, len(every), batch)])

    @torch.inference_mode()
    def rank(self, model, prompt_ids: list[int], chunk: int = 16) -> str:
        """The label with the highest `scores`, scoring the most promising labels first and stopping once
        no other can win: a label is never more likely than its first token, so labels whose first token
        is less likely than the best whole label found are skipped (same answer, a fraction of the work)."""
        first, cache = self._prefill(model, prompt_ids)
        bounds = first[torch.tensor([q[0] for q in self.sequences], device=first.device)]
        order = bounds.argsort(descending=True).tolist()
        best, best_i = float("-inf"), order[0]
        for i in range(0, len(order), chunk):
            todo = [j for j in order[i:i + chunk] if float(bounds[j]) > best]
            if not todo:
                break
            scores = self._score(model, first, cache, todo)
            k = int(scores.argmax())
            if float(scores[k]) > best:
                best, best_i = float(scores[k]), todo[k]
        return self.labels[best_i]

    def _prefill(self, model, prompt_ids: list[int]):
        device = next(model.parameters()).device
        cache = DynamicCache()
        out = model(input_ids=torch.tensor([prompt_ids], device=device), **with_cache(model, cache), use_cache=True,
                    logits_to_keep=1)
        return out.logits[0, -1].float().log_softmax(-1), cache

    def _score(self, model, first: torch.Tensor, cache, which: list[int]) -> torch.Tensor:
        device = first.device
        seqs = [self.sequences[j] for j in which]
        width = max(len(q) for q in seqs)
        total = first[torch.tensor([q[0] for q in seqs], device=device)]
        if width == 1:
            return total
        # the rest of each label, right-padded: padding comes after, so it is never attended to
        ids = torch.tensor([q[:-1] + [0] * (width - len(q)) for q in seqs], device=device)
        targets = torch.tensor([q[1:] + [0] * (width - len(q)) for q in seqs], device=device)
        mask = torch.tensor([[1.0] * (len(q) - 1) + [0.0] * (width - len(q)) for q in seqs], device=device)
        branch = DynamicCache()
        for layer, (k, v) in enumerate(_cache_tensors(cache)):
            branch.update(k.expand(len(seqs), *k.shape[1:]), v.expand(len(seqs), *v.shape[1:]), layer)
        logp = model(input_ids=ids, **with_cache(model, branch), use_cache=True).logits.float().log_softmax(-1)
        return total + (logp.gather(-1, targets[..., None])[..., 0] * mask).sum(-1)


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def json_prefix_state(text: str, max_space: int | None = None) -> str:
    """'invalid', 'partial' (a prefix of some JSON object) or 'complete' (one whole object, maybe + spaces).

    With `max_space`, more than that many whitespace characters in a row outside strings are invalid (a small
    model can otherwise pad an object with newlines until it runs out of tokens)."""
    stack: list[str] = []
    space = 0
    expect = "start"  # start, key_or_end, key, colon, value, value_or_end, comma_or_end, done
    in_string = escape = False
    literal = ""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if in_string:
            if escape:
                if c not in '"\\/bfnrtu':
                    return "invalid"
                escape = False
            elif c == "\\":
                escape = True
            elif c == '"':
                in_string = False
            elif ord(c) < 0x20:
                return "invalid"
            i += 1
            continue
        if literal:
            if c.isalnum() or c in "+-.":
                literal += c
                if not _literal_prefix_ok(literal):
                    return "invalid"
                i += 1
                continue
            if not _literal_complete(literal):
                return "invalid"
            literal = ""
            expect = "comma_or_end"
        if c in " \t\n\r":
            space += 1
            if max_space is not None and space > max_space:
                return "invalid"
            i += 1
            continue
        space = 0
        if expect == "done":
            return "invalid"
        if expect == "start":
            if c != "{":
                return "invalid"
            stack.append("{")
            expect = "key_or_end"
        elif expect in ("key_or_end", "key"):
            if c == "}" and expect == "key_or_end":
                stack.pop()
                expect = "comma_or_end" if stack else "done"
            elif c == '"':
                in_string = True
                expect = "colon"
            else:
                return "invalid"
        elif expect == "colon":
            if c != ":":
                return "invalid"
            expect = "value"
        elif expect in ("value", "value_or_end"):
            if c == "]" and expect == "value_or_end":
                stack.pop()
                expect = "comma_or_end" if stack else "done"
            elif c == '"':
                in_string = True
                expect = "comma_or_end"
            elif c in "{[":
                stack.append(c)
                expect = "key_or_end" if c == "{" else "value_or_end"
            elif c.isdigit() or c in "-tfn":
                literal = c
                if not _literal_prefix_ok(literal):
                    return "invalid"
            else:
                return "invalid"
        elif expect == "comma_or_end":
            if c == ",":
                expect = "key" if stack[-1] == "{" else "value"
            elif (c == "}" and stack[-1] == "{") or (c == "]" and stack[-1] == "["):
                stack.pop()
                expect = "comma_or_end" if stack else "done"
            else:
                return "invalid"
        i += 1
    return "complete" if expect == "done" and not in_string else "partial"


_WORDS = ("true", "false", "null")


def _literal_prefix_ok(s: str) -> bool:
    if s[0] in "tfn":
        return any(w.startswith(s) for w in _WORDS)
    digits = s[1:] if s.startswith("-") else s
    return all(ch.isdigit() for ch in digits) and not (len(digits) > 1 and digits[0] == "0")


def _literal_complete(s: str) -> bool:
    return s in _WORDS or (_literal_prefix_ok(s) and s not in ("-",))


def close_json(text: str) -> str:
    """Finish a partial JSON object so that it parses (used when the token budget runs out)."""
    for suffix in ("", '"', '"}', "}", "]}", '"]}', ": null}", '": null}', "}}", '"}}', "]}}", '"]}}'):
        try:
            json.loads(text + suffix)
            return text + suffix
        except json.JSONDecodeError:
            continue
    cut = text
    while cut:  # fall back to the longest prefix that can be closed
        cut = cut[:-1]
        for suffix in ("}", '"}', "}}"):
            try:
                json.loads(cut + suffix)
                return cut + suffix
            except json.JSONDecodeError:
                continue
    return "{}"


def _span(value: str, source: str, closed: bool, used: list[tuple[int, int]]) -> tuple[int, int] | None:
    """Where `value` occurs in `source` starting at the start of a word and, when `closed`, ending at the
    end of one, without overlapping the `used` spans: "Sebastian Karlsson" and "Sebastian" are spans of
    "the best Sebastian Karlsson melody", "Sebastian Ka" and "an Karlsson" are not."""
    if not value:
        return None if closed else (0, 0)
    if value[0].isspace() or (closed and value[-1].isspace()):
        return None  # " Psychedelic Rock" is not a slot value
    start = source.find(value)
    while start != -1:
        end = start + len(value)
        if ((start == 0 or not source[start - 1].isalnum() or not value[0].isalnum())
                and (not closed or end == len(source) or not source[end].isalnum() or not value[-1].isalnum())
                and all(end <= a or start >= b for a, b in used)):
            return start, end
        start = source.find(value, start + 1)
    return None


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def command_ok(text: str, source: str | None = None, intents: list[str] | None = None,
               slot_names: list[str] | None = None) -> bool:
    """Whether the (partial) JSON `text` can still become an allowed command {"intent": ..., "slots": {...}}:
    with `source` (the request), every value inside a nested object — a slot value — is a string made of
    whole words of it, no two values overlap, and no slot name repeats; with `intents`, the top-level
    "intent" is one of them; with `slot_names`, every nested key is one of them. Open strings only need
    to be the start of an allowed one."""
    depth, in_string, is_key, escape = 0, False, False, False
    expect_key, expect_value, buf = False, False, []
    keys: list[set[str]] = []
    key_at: dict[int, str] = {}
    used: list[tuple[int, int]] = []

    def allowed(value: str, closed: bool) -> bool:
        if is_key:
            if depth >= 2:
                if closed and value in keys[-1]:
                    return False  # the same slot twice
                if slot_names is not None:
                    return value in slot_names if closed else any(n.startswith(value) for n in slot_names)
            return True
        if depth == 1 and intents is not None and key_at.get(1) == "intent":
            return value in intents if closed else any(n.startswith(value) for n in intents)
        if depth >= 2 and source is not None:
            span = _span(value, source, closed, used)
            if span is not None and closed:
                used.append(span)
            return span is not None
        return True

    for c in text:
        if in_string:
            if escape:
                escape = False
                buf.append(_ESCAPES.get(c, c))
            elif c == "\\":
                escape = True
            elif c == '"':
                in_string = False
                value = "".join(buf)
                if not allowed(value, closed=True):
                    return False
                if is_key:
                    key_at[depth] = value
                    if depth >= 2:
                        keys[-1].add(value)
            else:
                buf.append(c)
            continue
        if c in " \t\n\r":
            continue
        if expect_value:
            expect_value = False
            if depth >= 2 and source is not None and c != '"':
                return False  # a slot value must be a string
        if c == '"':
            in_string, is_key, buf = True, expect_key, []
        elif c == "{":
            depth, expect_key = depth + 1, True
            keys.append(set())
        elif c == "}":
            depth -= 1
            if keys:
                keys.pop()
        elif c == ":":
            expect_key, expect_value = False, True
        elif c == ",":
            expect_key = True
    if in_string:
        if escape:  # an escape must spell a character that the allowed strings have
            if is_key and depth >= 2 and slot_names is not None:
                pool = slot_names
            elif not is_key and depth == 1 and intents is not None and key_at.get(1) == "intent":
                pool = intents
            elif not is_key and depth >= 2 and source is not None:
                pool = [source]
            else:
                pool = ['"']
            if not any(ch in allowed_text for allowed_text in pool for ch in '"\\/'):
                return False
        return allowed("".join(buf), closed=False)
    return True


class JSONConstraint:
    """The output is one valid JSON object; decoding stops when it closes.

    With `copy_from` (the user's request), string values inside nested objects — slot values — must
    be spans of it, as in SNIPS-style slot filling: the model picks where a slot starts and ends
    instead of spelling the value from memory. With `intents` / `slot_names` (a command schema), the
    "intent" value and the slot names must come from them."""

    def __init__(self, tokenizer, stop_id: int, candidates: int = 64, copy_from: str | None = None,
                 intents: list[str] | None = None, slot_names: list[str] | None = None,
                 max_space: int | None = None):
        self.tokenizer = tokenizer
        self.max_space = max_space
        self.stop_id = stop_id
        self.candidates = candidates
        self.copy_from = copy_from
        self.intents, self.slot_names = intents, slot_names
        self.checked = copy_from is not None or intents is not None or slot_names is not None

    def _ok(self, text: str) -> bool:
        if json_prefix_state(text, self.max_space) == "invalid":
            return False
        return not self.checked or command_ok(text, self.copy_from, self.intents, self.slot_names)

    def choose(self, logits: torch.Tensor, generated: list[int]) -> int:
        if generated and json_prefix_state(self.tokenizer.decode(generated)) == "complete":
            return self.stop_id
        top = torch.topk(logits[0], min(self.candidates, logits.size(-1))).indices.tolist()
        for t in top:
            if t != self.stop_id and self._ok(self.tokenizer.decode(generated + [t])):
                return t
        if self.checked or self.max_space is not None:  # the next valid piece may be an unlikely token
            for t in torch.argsort(logits[0], descending=True)[len(top):].tolist():
                if t != self.stop_id and self._ok(self.tokenizer.decode(generated + [t])):
                    return t
        return self.stop_id  # nothing fits: stop; the caller closes the object

    @staticmethod
    def finish(text: str) -> str:
        return text if json_prefix_state(text) == "complete" else close_json(text.strip() or "{")

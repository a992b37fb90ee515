"""Constrained decoding: outputs that cannot fall outside a label set or outside valid JSON.

A constraint picks each next token from the model's scores but only among tokens that keep the
output valid, and says when the output is complete (the engine then stops).
"""

from __future__ import annotations

import json

import torch


class LabelConstraint:
    """The output is exactly one of `labels` (then the stop token)."""

    def __init__(self, tokenizer, labels: list[str], stop_id: int):
        self.stop_id = stop_id
        self.sequences = [list(tokenizer.encode(label, add_special_tokens=False)) + [stop_id]
                          for label in dict.fromkeys(labels)]

    def choose(self, logits: torch.Tensor, generated: list[int]) -> int:
        n = len(generated)
        allowed = {s[n] for s in self.sequences if len(s) > n and s[:n] == generated}
        if not allowed:
            return self.stop_id
        idx = torch.tensor(sorted(allowed))
        return int(idx[logits[0, idx].argmax()])


def json_prefix_state(text: str) -> str:
    """'invalid', 'partial' (a prefix of some JSON object) or 'complete' (one whole object, maybe + spaces)."""
    stack: list[str] = []
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
            i += 1
            continue
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


def _word_span(value: str, source: str, closed: bool) -> bool:
    """`value` occurs in `source` starting at the start of a word and, when `closed`, ending at the end
    of one: "Sebastian Karlsson" and "Sebastian" are spans of "the best Sebastian Karlsson melody",
    "Sebastian Ka" and "an Karlsson" are not."""
    if not value:
        return not closed
    if value[0].isspace() or (closed and value[-1].isspace()):
        return False  # " Psychedelic Rock" is not a slot value
    start = source.find(value)
    while start != -1:
        end = start + len(value)
        if ((start == 0 or not source[start - 1].isalnum() or not value[0].isalnum())
                and (not closed or end == len(source) or not source[end].isalnum() or not value[-1].isalnum())):
            return True
        start = source.find(value, start + 1)
    return False


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def nested_strings_copied(text: str, source: str) -> bool:
    """True when every value inside a nested object of the (partial) JSON `text` — the slot values of
    {"intent": ..., "slots": {...}} — is a string made of whole words of `source` (an open value: the
    start of such a span), and no key repeats within that object."""
    depth, in_string, is_key, escape = 0, False, False, False
    expect_key, expect_value, buf = False, False, []
    keys: list[set[str]] = []
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
                if depth >= 2:
                    if is_key:
                        if value in keys[-1]:
                            return False  # the same slot twice
                        keys[-1].add(value)
                    elif not _word_span(value, source, closed=True):
                        return False
            else:
                buf.append(c)
            continue
        if c in " \t\n\r":
            continue
        if expect_value:
            expect_value = False
            if depth >= 2 and c != '"':
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
    if in_string and depth >= 2 and not is_key:
        if escape and not any(ch in source for ch in '"\\/'):
            return False  # an escape would spell a character the request does not have
        return _word_span("".join(buf), source, closed=False)
    return True


class JSONConstraint:
    """The output is one valid JSON object; decoding stops when it closes.

    With `copy_from` (the user's request), string values inside nested objects — slot values — must
    be spans of it, as in SNIPS-style slot filling: the model picks where a slot starts and ends
    instead of spelling the value from memory."""

    def __init__(self, tokenizer, stop_id: int, candidates: int = 64, copy_from: str | None = None):
        self.tokenizer = tokenizer
        self.stop_id = stop_id
        self.candidates = candidates
        self.copy_from = copy_from

    def _ok(self, text: str) -> bool:
        if json_prefix_state(text) == "invalid":
            return False
        return self.copy_from is None or nested_strings_copied(text, self.copy_from)

    def choose(self, logits: torch.Tensor, generated: list[int]) -> int:
        if generated and json_prefix_state(self.tokenizer.decode(generated)) == "complete":
            return self.stop_id
        top = torch.topk(logits[0], min(self.candidates, logits.size(-1))).indices.tolist()
        for t in top:
            if t != self.stop_id and self._ok(self.tokenizer.decode(generated + [t])):
                return t
        if self.copy_from is not None:  # the span's next piece may be an unlikely token: look further
            for t in torch.argsort(logits[0], descending=True)[len(top):].tolist():
                if t != self.stop_id and self._ok(self.tokenizer.decode(generated + [t])):
                    return t
        return self.stop_id  # nothing fits: stop; the caller closes the object

    @staticmethod
    def finish(text: str) -> str:
        return text if json_prefix_state(text) == "complete" else close_json(text.strip() or "{")

"""Turn public task datasets into fine-tuning files, and split files into train and test."""

from __future__ import annotations

import json
import random
from pathlib import Path

from pocketlm.errors import UserError
from pocketlm.fsutil import atomic_write_text


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def split_file(path: str | Path, out_dir: str | Path, test_fraction: float = 0.1, seed: int = 0,
               limit: int | None = None, columns: list[str] | None = None, group_by: str | None = None) -> dict:
    """Shuffle the records of a .jsonl/.json/.csv/.tsv file and write out_dir/train.jsonl and test.jsonl.

    With `group_by` (a field), records that share its value land on the same side — every translation
    of one English sentence, every phrasing of one question — so the test set is never seen in training
    under another answer."""
    from pocketlm.data.sft import iter_records
    path, out_dir = Path(path), Path(out_dir)
    rows = [r for _, r in iter_records(path, columns)]
    if len(rows) < 2:
        raise UserError(f"{path}: needs at least 2 records to split")
    random.Random(seed).shuffle(rows)
    if limit:
        rows = rows[:limit]
    n_test = max(1, int(round(len(rows) * test_fraction)))
    if group_by is None:
        test, train = rows[:n_test], rows[n_test:]
    else:
        missing = next((i for i, r in enumerate(rows) if group_by not in r), None)
        if missing is not None:
            raise UserError(f"{path}: group_by field {group_by!r} missing (fields: {', '.join(rows[missing])})")
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(str(r[group_by]), []).append(r)
        test, train = [], []
        for members in groups.values():  # in shuffled order of first appearance
            (test if len(test) < n_test else train).extend(members)
        if not train:
            raise UserError(f"{path}: only one {group_by!r} group; nothing left to train on")
    _write_jsonl(out_dir / "test.jsonl", test)
    _write_jsonl(out_dir / "train.jsonl", train)
    return {"train": len(train), "test": len(test)}


def _read_json(path: Path):
    """JSON from UTF-8, also when emoji were written as UTF-8-encoded surrogate pairs (CESU-8), as in
    SNIPS' PlayMusic file; anything else that is not UTF-8 is reported with the file and byte offset."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        try:
            text = raw.decode("utf-8", errors="surrogatepass").encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeError:
            raise UserError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _command(intent: str, segments: list[dict]) -> dict:
    text = "".join(seg["text"] for seg in segments).strip()
    slots: dict[str, str] = {}
    for seg in segments:
        if "entity" in seg:
            name, value = seg["entity"], seg["text"].strip()
            slots[name] = f"{slots[name]} {value}" if name in slots else value
    return {"prompt": text, "completion": json.dumps({"intent": intent, "slots": slots}, ensure_ascii=False)}


def _swap_slot_values(intent: str, segments: list[dict], pool: dict[tuple[str, str], list[str]],
                      rng: random.Random) -> dict:
    """The same request with every slot value replaced by another training value of that slot and intent:
    "add clem burke to my list" -> "add Mac Miller to my list". The model sees each phrasing with many
    values, so it learns to copy the value from the request instead of recalling it."""
    out = []
    for seg in segments:
        if "entity" in seg and seg["text"].strip():
            old = seg["text"]
            lead, trail = old[: len(old) - len(old.lstrip())], old[len(old.rstrip()):]
            seg = {**seg, "text": lead + rng.choice(pool[intent, seg["entity"]]) + trail}
        out.append(seg)
    return _command(intent, out)


def snips_commands(snips_dir: str | Path, out_dir: str | Path, test_fraction: float = 0.1, seed: int = 0,
                   augment: int = 0) -> dict:
    """SNIPS NLU (2017 custom-intent-engines) -> {"prompt": utterance, "completion": '{"intent", "slots"}'} JSONL.

    `augment` adds that many copies of each training request with its slot values swapped for other
    training values of the same slot and intent (the test requests and their values are never used). Also writes
    schema.json: the intents and slot names of the training set."""
    root = Path(snips_dir)
    files = sorted(root.glob("*/train_*_full.json"))
    if not files:
        raise UserError(f"{root}: no SNIPS files (expected INTENT/train_INTENT_full.json)")
    rows = []
    for f in files:
        data = _read_json(f)
        for intent, examples in data.items():
            for ex in examples:
                rows.append((intent, ex["data"]))
    rng = random.Random(seed)
    rng.shuffle(rows)
    n_test = max(1, int(round(len(rows) * test_fraction)))
    test, train = rows[:n_test], rows[n_test:]
    pool: dict[tuple[str, str], list[str]] = {}
    for intent, segments in train:
        for seg in segments:
            if "entity" in seg and seg["text"].strip():
                pool.setdefault((intent, seg["entity"]), []).append(seg["text"].strip())
    train_rows = [_command(intent, segments) for intent, segments in train]
    for _ in range(augment):
        train_rows += [_swap_slot_values(intent, segments, pool, rng)
                       for intent, segments in train if any("entity" in seg for seg in segments)]
    if augment:
        rng.shuffle(train_rows)
    out_dir = Path(out_dir)
    _write_jsonl(out_dir / "test.jsonl", [_command(intent, segments) for intent, segments in test])
    _write_jsonl(out_dir / "train.jsonl", train_rows)
    schema = {"intents": sorted({intent for intent, _ in train}), "slots": sorted({name for _, name in pool})}
    atomic_write_text(out_dir / "schema.json", json.dumps(schema, indent=1) + "\n")
    return {"train": len(train_rows), "test": n_test, "intents": len(files)}

import json

import pytest

from pocketlm.data.tasks import snips_commands, split_file
from pocketlm.errors import UserError


def _snips_file(folder, intent, utterances):
    d = folder / intent
    d.mkdir(parents=True)
    data = {intent: [{"data": parts} for parts in utterances]}
    (d / f"train_{intent}_full.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def test_snips_utterances_become_json_commands(tmp_path):
    src = tmp_path / "snips"
    _snips_file(src, "PlayMusic", [[{"text": "play "}, {"text": "jazz", "entity": "genre"},
                                    {"text": " by "}, {"text": "Miles", "entity": "artist"},
                                    {"text": " "}, {"text": "Davis", "entity": "artist"}]] * 4)
    stats = snips_commands(src, tmp_path / "out", test_fraction=0.25)
    assert stats == {"train": 3, "test": 1, "intents": 1}
    row = json.loads((tmp_path / "out" / "test.jsonl").read_text())
    assert row["prompt"] == "play jazz by Miles Davis"
    assert json.loads(row["completion"]) == {"intent": "PlayMusic", "slots": {"genre": "jazz", "artist": "Miles Davis"}}


def test_snips_emoji_written_as_surrogate_pairs_are_read(tmp_path):
    # SNIPS' own PlayMusic file stores emoji as UTF-8-encoded UTF-16 surrogates (CESU-8), not valid UTF-8
    body = json.dumps({"PlayMusic": [{"data": [{"text": "play "}, {"text": "Pop X", "entity": "playlist"}]}] * 2},
                      ensure_ascii=False).replace("X", "\ud83c\udf55")
    raw = body.encode("utf-8", "surrogatepass")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    (tmp_path / "snips" / "PlayMusic").mkdir(parents=True)
    (tmp_path / "snips" / "PlayMusic" / "train_PlayMusic_full.json").write_bytes(raw)
    snips_commands(tmp_path / "snips", tmp_path / "out", test_fraction=0.5)
    row = json.loads((tmp_path / "out" / "train.jsonl").read_text())
    assert json.loads(row["completion"])["slots"]["playlist"] == "Pop \U0001f355"


def test_snips_file_that_is_not_utf8_is_named(tmp_path):
    src = tmp_path / "snips" / "GetWeather"
    src.mkdir(parents=True)
    (src / "train_GetWeather_full.json").write_bytes(b'{"GetWeather": [{"data": [{"text": "caf\xe9"}]}]}')
    with pytest.raises(UserError, match="train_GetWeather_full.json: not valid UTF-8 at byte"):
        snips_commands(tmp_path / "snips", tmp_path / "out")


def _pairs(tmp_path):
    path = tmp_path / "pairs.tsv"
    lines = ["en\tde"] + [f"sentence {i // 3}\tSatz {i // 3} Fassung {i % 3}" for i in range(60)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_split_group_by_keeps_every_translation_of_a_sentence_on_one_side(tmp_path):
    counts = split_file(_pairs(tmp_path), tmp_path / "out", test_fraction=0.2, seed=1, group_by="en")
    train, test = _read(tmp_path / "out/train.jsonl"), _read(tmp_path / "out/test.jsonl")
    assert counts == {"train": len(train), "test": len(test)} and len(train) + len(test) == 60
    assert 12 <= len(test) <= 14  # whole groups of 3 up to the asked fraction
    assert not {r["en"] for r in train} & {r["en"] for r in test}
    assert all(sum(r["en"] == e for r in test) == 3 for e in {r["en"] for r in test})


def test_split_without_group_by_mixes_translations(tmp_path):
    split_file(_pairs(tmp_path), tmp_path / "out", test_fraction=0.2, seed=1)
    train, test = _read(tmp_path / "out/train.jsonl"), _read(tmp_path / "out/test.jsonl")
    assert len(test) == 12 and {r["en"] for r in train} & {r["en"] for r in test}


def test_split_group_by_unknown_field_is_named(tmp_path):
    with pytest.raises(UserError, match="group_by field 'english' missing"):
        split_file(_pairs(tmp_path), tmp_path / "out", group_by="english")


def test_snips_augment_swaps_slot_values_among_training_requests(tmp_path):
    src = tmp_path / "snips"
    artists = ["Miles Davis", "Nina Simone", "Chet Baker", "Bill Evans", "Ella Fitzgerald", "Art Blakey"]
    _snips_file(src, "PlayMusic", [[{"text": "play "}, {"text": a, "entity": "artist"}, {"text": " now"}]
                                   for a in artists])
    _snips_file(src, "GetWeather", [[{"text": "weather in "}, {"text": "Oslo", "entity": "city"}]] * 2)
    stats = snips_commands(src, tmp_path / "out", test_fraction=0.25, augment=3)
    test = [json.loads(x) for x in (tmp_path / "out" / "test.jsonl").read_text().splitlines()]
    train = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert stats["test"] == len(test) == 2 and stats["train"] == len(train) == 6 * 4
    test_values = {v for r in test for v in json.loads(r["completion"])["slots"].values()}
    train_values = set()
    for r in train:
        command = json.loads(r["completion"])
        for name, value in command["slots"].items():
            assert value in r["prompt"]  # the request and the command stay consistent
            train_values.add(value)
            # a value only moves within its own slot and intent: no city in a PlayMusic request
            assert (command["intent"], name) in {("PlayMusic", "artist"), ("GetWeather", "city")}
        if command["intent"] == "PlayMusic":
            assert r["prompt"].startswith("play ") and r["prompt"].endswith(" now")
    assert not (test_values - {"Oslo"}) & train_values  # held-out values never leak into training
    schema = json.loads((tmp_path / "out" / "schema.json").read_text())
    assert schema["intents"] == sorted({json.loads(r["completion"])["intent"] for r in train})
    assert set(schema["slots"]) <= {"artist", "city"}

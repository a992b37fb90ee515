"""Atomic writes (fsutil.py): a file appears whole, or the old one stays; no temporary file is left."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from pocketlm.fsutil import atomic_file, atomic_path, atomic_write_json, atomic_write_text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_path_for_a_writer_that_takes_a_file_name(tmp_path):
    out = tmp_path / "new" / "weights.npy"  # the folder is made
    with atomic_path(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".weights.npy.") and not out.exists()
        with open(tmp, "wb") as f:  # the library opens the file itself, by name
            np.save(f, np.arange(4))
    assert np.load(out).tolist() == [0, 1, 2, 3]
    assert [p.name for p in out.parent.iterdir()] == ["weights.npy"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(out) as tmp:
        tmp.write_bytes(b"half a fi")
        raise RuntimeError("disk on fire")
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_atomic_file_and_writes(tmp_path):
    out = tmp_path / "a.txt"
    with atomic_file(out, "w") as f:
        f.write("one")
    assert out.read_text() == "one"
    with pytest.raises(KeyboardInterrupt), atomic_file(out, "w") as f:
        f.write("two")
        raise KeyboardInterrupt
    assert out.read_text() == "one"
    atomic_write_text(out, "three")
    atomic_write_json(tmp_path / "b.json", {"k": "é"})
    assert out.read_text() == "three" and (tmp_path / "b.json").read_text() == '{\n  "k": "é"\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]

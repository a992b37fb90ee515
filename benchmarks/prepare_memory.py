"""Throughput and peak memory of `pocketlm prepare` on N MB of varied text.

The corpus remixes real TinyStories sentences (../shared/data or $POCKETLM_DATA) into new stories,
spread over .txt (separator lines) and .jsonl files, with ~2% exact and ~2% near duplicates so that
every stage does real work. Without the real data, it falls back to a synthetic Zipf vocabulary.
`prepare` runs in a child process; peak RSS is that child's (getrusage RUSAGE_CHILDREN).

    python benchmarks/prepare_memory.py --mb 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    env = os.environ.get("POCKETLM_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def sentences(rng: random.Random) -> tuple[list[str], str]:
    data = shared_data()
    found = []
    if data is not None:
        for name in ("train.txt", "valid.txt"):
            p = data / "tinystories" / name
            if p.exists():
                text = p.read_text(encoding="utf-8").replace("<|endoftext|>", "\n")
                found += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 3]
    if found:
        return found, "TinyStories sentences, remixed"
    words = [f"w{i}" for i in range(20_000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    synthetic = [" ".join(rng.choices(words, weights, k=rng.randint(5, 20))).capitalize() + "." for _ in range(50_000)]
    return synthetic, "synthetic Zipf text (TinyStories not found)"


def generate(folder: Path, megabytes: float, files: int, seed: int) -> tuple[int, str]:
    rng = random.Random(seed)
    pool, origin = sentences(rng)
    target = int(megabytes * 1_000_000)
    per_file = target // files
    written = docs = 0
    recent: list[str] = []
    for i in range(files):
        jsonl = i % 2 == 1
        path = folder / f"part{i:03d}.{'jsonl' if jsonl else 'txt'}"
        size = 0
        with open(path, "w", encoding="utf-8") as f:
            while size < per_file:
                r = rng.random()
                if recent and r < 0.02:
                    story = rng.choice(recent)  # exact duplicate
                elif recent and r < 0.04:
                    words = rng.choice(recent).split(" ")
                    words[rng.randrange(len(words))] = rng.choice(["big", "small", "red", "happy"])
                    story = " ".join(words)  # near duplicate
                else:
                    n = rng.randint(4, 16)
                    paragraphs = [" ".join(rng.choices(pool, k=rng.randint(2, 5))) for _ in range(max(1, n // 4))]
                    story = "\n\n".join(paragraphs)
                    if len(recent) < 2000:
                        recent.append(story)
                    else:
                        recent[rng.randrange(2000)] = story
                chunk = json.dumps({"text": story}, ensure_ascii=False) + "\n" if jsonl else story + "\n<|endoftext|>\n"
                f.write(chunk)
                size += len(chunk.encode("utf-8"))
                docs += 1
        written += size
    return docs, origin


CHILD = """
import json, sys
from pocketlm.data.prepare import PrepareConfig, prepare
stats = prepare(PrepareConfig(inputs=[sys.argv[1]], out=sys.argv[2], vocab_size=int(sys.argv[3])), progress=False)
print(json.dumps(stats))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200, help="megabytes of input text to generate")
    ap.add_argument("--files", type=int, default=20, help="number of input files")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where to put the corpus and output (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated corpus and output")
    args = ap.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="pocketlm-bench-"))
    corpus, out = root / "corpus", root / "out"
    shutil.rmtree(corpus, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    corpus.mkdir(parents=True)
    try:
        t = time.perf_counter()
        n_docs, origin = generate(corpus, args.mb, args.files, args.seed)
        size = sum(p.stat().st_size for p in corpus.iterdir())
        print(f"generated {size / 1e6:.1f} MB, {n_docs:,} documents in {args.files} files "
              f"({origin}) in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(corpus), str(out), str(args.vocab_size)],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"prepare failed:\n{proc.stderr}")
        stats = json.loads(proc.stdout.strip().splitlines()[-1])
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        s, sec, d = stats["splits"], stats["seconds"], stats["documents"]
        print("| input MB | docs in | exact dup | near dup | train tokens | read+clean+dedupe s | tokenizer s "
              "| encode s | wall s | MB/s | peak RSS MB | cores |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {size / 1e6:.0f} | {d['in']:,} | {d['exact_duplicates']:,} | {d['near_duplicates']:,} "
              f"| {s['train']['tokens']:,} | {sec['read_clean_dedupe']:.1f} | {sec['tokenizer']:.1f} "
              f"| {sec['encode']:.1f} | {wall:.1f} | {size / 1e6 / wall:.2f} | {peak_mb:.0f} | {os.cpu_count()} |")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Exact and near-duplicate document removal, streaming and in compact memory.

Exact duplicates are documents whose cleaned text is byte-for-byte equal (a 64-bit BLAKE2b digest
of the UTF-8 text). Near duplicates are documents whose word 5-gram shingle sets have an estimated
Jaccard similarity of at least `threshold`: each document gets a MinHash signature (datasketch),
signatures are banded for locality-sensitive hashing, and every band collision is verified against
the stored signature, so the banding can favour recall without letting dissimilar documents through.

The first occurrence of a document is kept; later copies are removed. Memory grows with the number
of *kept documents*, not with the amount of text: per document, one 8-byte exact key, `bands`
8-byte band keys plus 4-byte ids, and a `num_perm`-slot 16-bit signature (about 300 bytes in all at
the defaults), all in numpy arrays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from datasketch import MinHash

NUM_PERM = 64
SHINGLE_WORDS = 5
MINHASH_SEED = 1
# Recall the LSH banding must reach at the threshold; candidates are verified afterwards.
_BAND_RECALL = 0.97

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# Odd 64-bit multipliers for the polynomial combinations below.
_MULTS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD,
     0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9],
    dtype=np.uint64,
)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: an avalanching bijection on uint64 (element-wise, wrapping)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def exact_key(data: bytes) -> int:
    """64-bit key of a document's UTF-8 bytes for exact deduplication."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class _WordHasher:
    """Deterministic 64-bit word hashes (BLAKE2b), with a bounded cache for frequent words."""

    def __init__(self, max_cache: int = 200_000):
        self.cache: dict[str, int] = {}
        self.max_cache = max_cache

    def __call__(self, words: list[str]) -> np.ndarray:
        cache = self.cache
        out = list(map(cache.get, words))  # C-speed lookups; only unseen words take the slow path
        if None in out:
            for i, h in enumerate(out):
                if h is None:
                    w = words[i]
                    h = cache.get(w)
                    if h is None:
                        digest = hashlib.blake2b(w.encode("utf-8", "surrogatepass"), digest_size=8).digest()
                        h = int.from_bytes(digest, "little")
                        if len(cache) >= self.max_cache:
                            cache.clear()
                        cache[w] = h
                    out[i] = h
        return np.array(out, dtype=np.uint64)


def batch_shingles(texts: Sequence[str], n: int = SHINGLE_WORDS, word_hasher=None) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes (as uint64) of the word n-grams of each text, concatenated, and the count per text.

    Words are the lowercased text split on whitespace. A text of fewer than `n` words is one
    shingle; a text without words has none.
    """
    hasher = word_hasher or _WordHasher()
    words = [t.lower().split() for t in texts]
    lens = np.array([len(w) for w in words], dtype=np.int64)
    wh = hasher([w for ws in words for w in ws])
    total = len(wh)
    # Polynomial hash of every window of n consecutive words in the concatenation (wrapping mod 2^64);
    # windows that cross a document boundary are dropped below.
    m = max(total - n + 1, 0)
    h = np.zeros(m, dtype=np.uint64)
    for i in range(n):
        h = h * _MULTS[0] + wh[i:i + m]
    starts = np.cumsum(lens) - lens
    counts = np.where(lens >= n, lens - n + 1, np.minimum(lens, 1))
    full = lens >= n
    seg = np.where(full, lens - n + 1, 0)
    positions = np.arange(int(seg.sum()), dtype=np.int64) + np.repeat(starts - (np.cumsum(seg) - seg), seg)
    parts = h[positions]
    short = np.flatnonzero((lens > 0) & ~full)
    if len(short):  # rare: texts of 1..n-1 words get one shingle of all their words
        mult, extra = int(_MULTS[0]), []
        for d in short.tolist():
            v = 0
            for x in wh[starts[d]:starts[d] + lens[d]].tolist():
                v = (v * mult + x) & 0xFFFFFFFFFFFFFFFF
            extra.append(v)
        # Insert each short text's shingle after the shingles of the texts before it.
        parts = np.insert(parts, (np.cumsum(seg) - seg)[short], np.array(extra, dtype=np.uint64))
    return _mix64(parts) >> np.uint64(32), counts


def shingle_hashes(text: str, n: int = SHINGLE_WORDS, word_hasher=None) -> np.ndarray:
    """32-bit hashes (as uint64) of the word n-grams of one text; see `batch_shingles`."""
    return batch_shingles([text], n, word_hasher)[0]


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (what datasketch's affine32 scheme applies to input hashes)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def lsh_params(threshold: float, num_perm: int, recall: float = _BAND_RECALL) -> tuple[int, int]:
    """(bands, rows): the most selective banding whose collision probability at `threshold` is >= recall."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


class _SortedRuns:
    """A multiset of (uint64 key -> uint32 value) in a few sorted numpy runs (a small LSM tree).

    Adding is amortised O(log n) per key; looking up a batch is a binary search per run.
    """

    def __init__(self):
        self.keys: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(k) for k in self.keys)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.vals, strict=True))

    def add(self, keys: np.ndarray, vals: np.ndarray) -> None:
        if len(keys) == 0:
            return
        order = np.argsort(keys, kind="stable")
        self.keys.append(keys[order])
        self.vals.append(vals[order])
        # Merge while the newest run is at least half the size of the one before: log2(n) runs at most.
        while len(self.keys) >= 2 and len(self.keys[-2]) <= 2 * len(self.keys[-1]):
            k = np.concatenate([self.keys[-2], self.keys[-1]])
            v = np.concatenate([self.vals[-2], self.vals[-1]])
            order = np.argsort(k, kind="stable")
            self.keys[-2:] = [k[order]]
            self.vals[-2:] = [v[order]]

    def lookup(self, queries: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """For each query index with matches: (index, values of all entries with that key)."""
        found: list[tuple[int, np.ndarray]] = []
        for keys, vals in zip(self.keys, self.vals, strict=True):
            lo = np.searchsorted(keys, queries, side="left")
            hi = np.searchsorted(keys, queries, side="right")
            for i in np.nonzero(hi > lo)[0]:
                found.append((int(i), vals[lo[i]:hi[i]]))
        return found


class _SignatureStore:
    """Growable (n, num_perm) uint16 array of b-bit MinHash signatures, for verifying candidates."""

    def __init__(self, num_perm: int):
        self.data = np.zeros((1024, num_perm), dtype=np.uint16)
        self.n = 0

    def append(self, sig: np.ndarray) -> int:
        if self.n == len(self.data):
            grown = np.zeros((2 * len(self.data), self.data.shape[1]), dtype=np.uint16)
            grown[: self.n] = self.data
            self.data = grown
        self.data[self.n] = sig
        self.n += 1
        return self.n - 1


class Deduplicator:
    """Streaming exact + near-duplicate filter. Feed documents in order with `check_batch`."""

    def __init__(self, exact: bool = True, near: bool = True, threshold: float = 0.8,
                 num_perm: int = NUM_PERM, shingle_words: int = SHINGLE_WORDS):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.exact = exact
        self.near = near
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_words = shingle_words
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.exact_removed = 0
        self.near_removed = 0
        self._exact_keys = _SortedRuns()
        self._band_index = _SortedRuns()
        self._sigs = _SignatureStore(num_perm)
        self._words = _WordHasher()
        band_ids = np.arange(1, self.bands + 1, dtype=np.uint64)
        self._band_salt = _mix64(band_ids * _MULTS[2])
        self._row_mults = _MULTS[3] ** np.arange(self.rows, dtype=np.uint64)
        self._perms: tuple[np.ndarray, np.ndarray] | None = None
        self._vectorized = near and self._check_vectorized()

    @property
    def memory_bytes(self) -> int:
        return self._exact_keys.nbytes + self._band_index.nbytes + self._sigs.data.nbytes

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), num_perm) MinHash signatures (uint64) of texts that have at least one word.

        The signatures are datasketch MinHashes (seed MINHASH_SEED, `int` as the hash function of the
        precomputed shingle hashes). For datasketch's default affine32 scheme they are computed for
        the whole batch at once with numpy; a self-check against `MinHash.update_batch` guards that
        path, and `MinHash.bulk` is used otherwise.
        """
        shingles, counts = batch_shingles(texts, self.shingle_words, self._words)
        if len(texts) and counts.min() == 0:
            raise ValueError("every text needs at least one word")
        if self._vectorized:
            return self._batch_minhash(shingles, counts)
        lists = np.split(shingles, np.cumsum(counts)[:-1])
        mhs = MinHash.bulk([x.tolist() for x in lists], num_perm=self.num_perm, seed=MINHASH_SEED, hashfunc=int)
        if not mhs:
            return np.zeros((0, self.num_perm), dtype=np.uint64)
        return np.stack([m.hashvalues for m in mhs]).astype(np.uint64)

    def _batch_minhash(self, shingles: np.ndarray, counts: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        a, b = self._perms
        sig = np.full((len(counts), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        doc = np.repeat(np.arange(len(counts)), counts)
        hv_all = _fmix32(shingles.astype(np.uint32))
        for lo in range(0, len(shingles), chunk):  # bounded temporaries: chunk x num_perm values
            hv = hv_all[lo:lo + chunk]
            d = doc[lo:lo + chunk]
            phv = hv[:, None] * a + b  # uint32 arithmetic wraps: a*h+b mod 2^32
            starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
            mins = np.minimum.reduceat(phv, starts, axis=0)
            rows = d[starts]
            sig[rows] = np.minimum(sig[rows], mins)
        return sig.astype(np.uint64)

    def _check_vectorized(self) -> bool:
        template = MinHash(num_perm=self.num_perm, seed=MINHASH_SEED, hashfunc=int)
        if getattr(template, "scheme", None) != "affine32":
            return False
        a, b = template.permutations
        self._perms = (np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32))
        probe = ["the quick brown fox jumps over the lazy dog again and again", "two words"]
        shingles, counts = batch_shingles(probe, self.shingle_words, _WordHasher())
        expected = []
        for part in np.split(shingles, np.cumsum(counts)[:-1]):
            m = template.copy()
            m.update_batch(part.tolist())
            expected.append(np.asarray(m.hashvalues, dtype=np.uint64))
        return bool(np.array_equal(self._batch_minhash(shingles, counts), np.stack(expected)))

    def _band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(n, bands) uint64 keys, one per band of `rows` signature values."""
        n = len(sigs)
        b = sigs[:, : self.bands * self.rows].reshape(n, self.bands, self.rows)
        h = (b * self._row_mults).sum(axis=2, dtype=np.uint64)  # wraps mod 2^64
        return _mix64(h ^ self._band_salt)

    def check_batch(self, texts: Sequence[str], data: Sequence[bytes] | None = None) -> list[str | None]:
        """For each text in order: None if kept, "exact" or "near" if it duplicates an earlier one.

        `data` may pass the texts' UTF-8 encodings when the caller already has them.
        """
        verdicts: list[str | None] = [None] * len(texts)
        if data is None:
            data = [t.encode("utf-8", "surrogatepass") for t in texts]
        if self.exact:
            keys = np.array([exact_key(d) for d in data], dtype=np.uint64)
            seen = {i for i, _ in self._exact_keys.lookup(keys)}
            batch: set[int] = set()
            for i, k in enumerate(keys.tolist()):
                if i in seen or k in batch:
                    verdicts[i] = "exact"
                    self.exact_removed += 1
                else:
                    batch.add(k)
            kept = np.array([i for i, v in enumerate(verdicts) if v is None], dtype=np.int64)
            self._exact_keys.add(keys[kept], np.zeros(len(kept), dtype=np.uint32))
        if not self.near:
            return verdicts

        todo = [i for i, v in enumerate(verdicts) if v is None and texts[i].strip()]
        if not todo:
            return verdicts
        sigs = self.signatures([texts[i] for i in todo])
        keys = self._band_keys(sigs)
        small = (sigs & np.uint64(0xFFFF)).astype(np.uint16)  # b-bit signatures for verification
        candidates: list[list[np.ndarray]] = [[] for _ in todo]
        for flat, ids in self._band_index.lookup(keys.ravel()):
            candidates[flat // self.bands].append(ids)
        local: dict[int, list[int]] = {}  # band key -> store ids of documents kept earlier in this batch
        new_keys, new_ids = [], []
        need = int(np.ceil(self.threshold * self.num_perm - 1e-9))
        for j, i in enumerate(todo):
            row_keys = keys[j].tolist()
            cands = candidates[j]
            for k in row_keys:
                if k in local:
                    cands.append(np.array(local[k], dtype=np.uint32))
            if cands:
                ids = np.unique(np.concatenate(cands))
                matches = (self._sigs.data[ids] == small[j]).sum(axis=1)
                if matches.max() >= need:
                    verdicts[i] = "near"
                    self.near_removed += 1
                    continue
            sid = self._sigs.append(small[j])
            for k in row_keys:
                local.setdefault(k, []).append(sid)
            new_keys.append(keys[j])
            new_ids.append(np.full(self.bands, sid, dtype=np.uint32))
        if new_keys:
            self._band_index.add(np.concatenate(new_keys), np.concatenate(new_ids))
        return verdicts

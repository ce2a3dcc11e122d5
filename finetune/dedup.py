"""Duplicates out of a dataset in memory that does not grow with it. Both checks take the text
normalized once (`normalize`: case, punctuation and whitespace do not count).

Exact duplicates: the 8-byte BLAKE2b of the normalized text goes into a table of a SQLite file in
the build's temporary folder (`INSERT OR IGNORE`): every row is compared with every earlier one,
and the process holds SQLite's page cache, not the set.

Near duplicates (the same answer give or take a word, a question re-asked in other words): MinHash
over character 5-grams (so Chinese, which has no spaces, works as English does), in its
one-permutation form (Li, Owen and Zhang, 2012): each 5-gram is hashed once, the hash's top five
bits choose one of 32 bins, and a bin keeps its smallest hash. That costs one hash and one sort a
row where 32 hash functions cost 32 (a 50,000-answer build spent most of its time there). The
Jaccard similarity is estimated as the share of equal bins among the bins either text filled; a
row at or above NEAR_DUPLICATE_JACCARD of an indexed row is dropped. Candidates come from
locality-sensitive hashing in 8 bands of 4 bins.

The index is bounded: fixed-size bucket tables per band (a newer row overwrites a bucket's older
one) and a ring of the last WINDOW rows' signatures, so memory is the same for a thousand rows or
ten million; a near duplicate further apart than WINDOW kept rows (or whose buckets were all
overwritten) is missed. Rows come conversation by conversation, so repeats within a conversation
and across nearby ones are always seen. SimHash would need less room but separates short texts
poorly (one changed word in a 10-word question moves it by more bits than a usable threshold)."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import unicodedata
from pathlib import Path

import numpy as np

SHINGLE_CHARS = 5
BINS = 32
BIN_SHIFT = np.uint64(64 - 5)  # the top five bits choose the bin
BANDS = 8
BINS_PER_BAND = BINS // BANDS
NEAR_DUPLICATE_JACCARD = 0.8
WINDOW = 20_000
BUCKET_BITS = 16
MAX_CHARS = 4_000  # the start of a very long text decides; it bounds the work per row
EMPTY = np.uint32(0xFFFFFFFF)
_NOT_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Compatibility forms folded (a full-width question mark is `?`), case folded, every run of
    punctuation and whitespace made one space: what two texts that say the same thing still
    differ in."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def fingerprint(text: str) -> int:
    """A signed 64-bit hash of the normalized text (SQLite's INTEGER)."""
    digest = hashlib.blake2b(normalize(text).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class ExactDuplicates:
    """Hashes seen so far, in a SQLite table on disk."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(str(path), isolation_level=None)
        self.connection.execute("PRAGMA journal_mode = OFF")
        self.connection.execute("PRAGMA synchronous = OFF")
        self.connection.execute("PRAGMA cache_size = -4096")  # 4 MiB
        self.connection.execute("CREATE TABLE seen (hash INTEGER PRIMARY KEY) WITHOUT ROWID")

    def seen_before(self, normalized: str) -> bool:
        """Whether this normalized text came before; it is remembered either way."""
        digest = hashlib.blake2b(normalized.encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "big", signed=True)
        cursor = self.connection.execute("INSERT OR IGNORE INTO seen VALUES (?)", (key,))
        return cursor.rowcount == 0

    def close(self) -> None:
        self.connection.close()


# The 5-gram's polynomial hash, times the golden ratio's odd 64-bit multiplier (Fibonacci
# hashing): the product's top bits, which choose the bin, depend on every bit of the 5-gram.
_POWERS = np.array([1_000_003**power % 2**64 for power in range(SHINGLE_CHARS - 1, -1, -1)], dtype=np.uint64)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BAND_MULTIPLIERS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F], dtype=np.uint64)


class NearDuplicates:
    """The bounded one-permutation MinHash index (module docstring)."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.buckets = np.full((BANDS, 1 << BUCKET_BITS), -1, dtype=np.int64)
        self.signatures = np.zeros((window, BINS), dtype=np.uint32)
        self.serial = 0

    @staticmethod
    def signature(normalized: str) -> np.ndarray:
        codes = np.frombuffer((normalized[:MAX_CHARS] or " ").encode("utf-32-le"), dtype=np.uint32)
        codes = codes.astype(np.uint64)
        if codes.size < SHINGLE_CHARS:
            codes = np.concatenate([codes, np.zeros(SHINGLE_CHARS - codes.size, dtype=np.uint64)])
        shingles = np.correlate(codes, _POWERS, mode="valid")  # each 5-gram's polynomial hash, mod 2**64
        hashed = np.sort(shingles * _GOLDEN)
        bins = (hashed >> BIN_SHIFT).astype(np.intp)
        first = np.ones(hashed.size, dtype=bool)  # the smallest hash of each bin comes first
        first[1:] = bins[1:] != bins[:-1]
        signature = np.full(BINS, EMPTY, dtype=np.uint32)
        signature[bins[first]] = (hashed[first] >> np.uint64(27)).astype(np.uint32) & np.uint32(0xFFFFFFFE)
        return signature

    def _bucket_keys(self, signature: np.ndarray) -> list[int | None]:
        """A bucket per band (its four bins hashed to BUCKET_BITS); None for a band whose bins are
        all empty (short texts would otherwise all meet there)."""
        bands = signature.reshape(BANDS, BINS_PER_BAND)
        empty = (bands == EMPTY).all(axis=1).tolist()
        halves = bands.view(np.uint64)  # two 64-bit words a band
        keys = ((halves * _BAND_MULTIPLIERS).sum(axis=1, dtype=np.uint64) >> np.uint64(64 - BUCKET_BITS)).tolist()
        return [None if blank else key for key, blank in zip(keys, empty, strict=True)]

    @staticmethod
    def similarity(first: np.ndarray, second: np.ndarray) -> float:
        filled = (first != EMPTY) | (second != EMPTY)
        total = int(np.count_nonzero(filled))
        return int(np.count_nonzero((first == second) & filled)) / total if total else 1.0

    def seen_before(self, normalized: str) -> bool:
        """Whether a near duplicate of this normalized text is indexed; if not, it is indexed."""
        signature = self.signature(normalized)
        keys = self._bucket_keys(signature)
        oldest = self.serial - self.window
        checked: set[int] = set()
        for band, key in enumerate(keys):
            if key is None:
                continue
            candidate = int(self.buckets[band, key])
            if candidate < 0 or candidate < oldest or candidate in checked:
                continue
            checked.add(candidate)
            if self.similarity(self.signatures[candidate % self.window], signature) >= NEAR_DUPLICATE_JACCARD:
                return True
        self.signatures[self.serial % self.window] = signature
        for band, key in enumerate(keys):
            if key is not None:
                self.buckets[band, key] = self.serial
        self.serial += 1
        return False

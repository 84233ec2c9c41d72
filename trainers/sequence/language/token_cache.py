"""Token streams built once per node and memory-mapped by every process that needs them.

LaMo's auxiliary LM loss samples windows from a whole corpus' token stream. Tokenizing WikiText-103 (~120 M GPT-2
tokens) takes minutes of CPU and ~0.5 GB per process; done in every trial of a sweep, it is paid again by each
one. Here a stream is built once into

    <cache>/tokens/tokens-<key>.npy     (uint16 when the vocabulary fits, else int32)

and every trial opens it with ``np.load(mmap_mode="r")``: its pages live once in the node's page cache, shared
by all trials, and opening it takes milliseconds. ``<key>`` hashes an identity string that the caller derives
from everything the stream depends on (trainers/sequence/language/: the corpus' bytes or release name, and the
tokenizer's full serialization), so a changed corpus or tokenizer gets a new file, never a stale one.

``<cache>`` is ``$LAMO_CACHE_DIR`` (default ``~/.cache/lamo-sweeps``); give every node a local one. Processes on
one node never build the same stream twice: the first takes an exclusive ``fcntl.flock`` on
``tokens-<key>.lock`` and builds, the others wait on that lock and then read its result. The stream is written
to temporary files in the same directory and renamed into place only when complete, so a crashed build leaves
nothing a later process would read (and the lock dies with its process).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_ENV = "LAMO_CACHE_DIR"


def default_cache_dir() -> Path:
    """$LAMO_CACHE_DIR, else ~/.cache/lamo-sweeps: the builtin corpus and the token streams live there."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lamo-sweeps").expanduser()


@dataclass(frozen=True)
class TokenCache:
    """Where one token stream lives and how this call obtained it."""

    path: Path  # tokens-<key>.npy
    built: bool  # True when this call built the stream, False when it found it
    seconds: float  # spent in this call: building, or waiting for another process's build


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 for vocabularies up to 65,536 ids (GPT-2's 50,257): half the disk and page cache of int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def token_cache_path(identity: str, cache_dir: str | os.PathLike | None = None) -> Path:
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return Path(cache_dir or default_cache_dir()) / "tokens" / f"tokens-{key}.npy"


def lock_path(path: Path) -> Path:
    return path.with_suffix(".lock")


def ensure_token_stream(identity: str, vocab_size: int, encode: Callable[[], Iterable[np.ndarray]],
                        cache_dir: str | os.PathLike | None = None) -> TokenCache:
    """The stream named by `identity`, built from `encode()` (token-id arrays, concatenated in order) by this
    call when no process on this node has built it yet."""
    started = time.perf_counter()
    path = token_cache_path(identity, cache_dir)
    if path.is_file():  # the common case: no lock, no corpus read, no tokenizer run
        return TokenCache(path, built=False, seconds=time.perf_counter() - started)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path(path), "a+b")  # "a": never truncates a lock file another process holds
    except OSError as error:
        raise OSError(f"the token cache directory {path.parent} is not writable ({error.strerror}); set "
                      f"{CACHE_ENV} to a writable directory on this node") from None
    with lock:  # closing the file releases the lock, also when the build raises
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():  # another process built it while this one waited
            return TokenCache(path, built=False, seconds=time.perf_counter() - started)
        count = _write_stream(path, token_dtype(vocab_size), encode())
        _write_info(path, identity, count, token_dtype(vocab_size))
    return TokenCache(path, built=True, seconds=time.perf_counter() - started)


def open_token_stream(path: str | os.PathLike) -> np.ndarray:
    """A built stream as a read-only memory map."""
    return np.load(path, mmap_mode="r")


# ---------------------------------------------------------------------------------------------- internals

def _write_stream(path: Path, dtype: np.dtype, parts: Iterable[np.ndarray]) -> int:
    """Parts go to a raw temporary file as they come (one part in memory at a time); the .npy is then written
    beside it and renamed into place. Returns the number of tokens."""
    raw_fd, raw_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".raw")
    npy_fd, npy_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy.tmp")
    os.close(npy_fd)
    count = 0
    try:
        with os.fdopen(raw_fd, "wb") as raw:
            for part in parts:
                values = np.asarray(part)
                if values.size and (values.min() < 0 or values.max() > np.iinfo(dtype).max):
                    raise ValueError(f"token ids {values.min()}..{values.max()} do not fit {dtype.name}")
                raw.write(values.astype(dtype, copy=False).tobytes())
                count += values.size
        stream = np.lib.format.open_memmap(npy_name, mode="w+", dtype=dtype, shape=(count,))
        with open(raw_name, "rb") as raw:
            block = 1 << 24
            for offset in range(0, count, block):
                values = np.fromfile(raw, dtype=dtype, count=min(block, count - offset))
                stream[offset:offset + len(values)] = values
        stream.flush()
        del stream
        os.replace(npy_name, path)
    finally:
        for leftover in (raw_name, npy_name):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return count


def _write_info(path: Path, identity: str, count: int, dtype: np.dtype) -> None:
    """A human-readable note beside the stream saying what it is; the code never reads it back."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".json.tmp")
    with os.fdopen(fd, "w") as out:
        json.dump({"identity": identity, "tokens": count, "dtype": dtype.name}, out, indent=2)
    os.replace(tmp, path.with_suffix(".json"))

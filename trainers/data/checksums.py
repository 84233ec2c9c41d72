"""SHA-256 of files, read in 8 MiB blocks: downloads checked against the catalog, datasets recorded in trial
records, corpora keyed in the token cache — one helper for the one fact."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

BLOCK = 8 << 20


def feed_file(digest, path: str | os.PathLike) -> int:
    """Add a file's bytes to a hashlib object; returns how many."""
    size = 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
            size += len(block)
    return size


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    feed_file(digest, path)
    return digest.hexdigest()


def sha256_of_tree(path: str | os.PathLike) -> tuple[str, int]:
    """(SHA-256, size in bytes) of a file's bytes, or of a directory's files with their relative paths, in path
    order (Atari's DQN Replay checkpoints, a Minari dataset)."""
    root = Path(path)
    files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
    digest, size = hashlib.sha256(), 0
    for file in files:
        if root.is_dir():
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        size += feed_file(digest, file)
    return digest.hexdigest(), size

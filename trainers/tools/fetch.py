"""Fetch datasets by name into the caches the loaders read:

    python -m trainers.tools.fetch hopper-medium-v2 kitchen-partial minari:mujoco/hopper/medium-v0

A name is a D4RL id (``hopper-medium-v2``, a key of trainers/data/catalog.py's table), a task name
(``hopper-medium``, ``kitchen-partial``, ``hopper-medium-minari``) or a Minari id (``minari:mujoco/hopper/
medium-v0``). D4RL files are downloaded from the URL the d4rl package registered into the d4rl cache directory
($D4RL_DATASET_DIR, else ~/.d4rl/datasets) under D4RL's own file name; Minari datasets with Minari's own download
into its storage ($MINARI_DATASETS_PATH, else ~/.minari/datasets).

A D4RL download streams into ``<file>.part`` beside its destination with a progress bar, resumes from the bytes
already there (an HTTP Range request; also when the connection drops mid-transfer, up to --retries times, or when
the command is run again), checks the size (the table's, else the server's Content-Length), the SHA-256 where the
table knows it, that the file reads as D4RL's hdf5 layout with the observation and action sizes of every task that
reads it, and only then renames it into place. A file that fails a check is deleted, so nothing half-written,
corrupt or of another environment is ever where a loader looks. A Minari download goes
to a scratch directory inside Minari's storage and is moved into place once Minari's download returned.
``--base-url`` (or $LAMO_D4RL_BASE_URL) fetches D4RL's files from a mirror of its directory layout instead.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import requests
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from trainers.data.catalog import (
    D4RL_BASE_URL,
    D4RL_FILES,
    MINARI_PREFIX,
    RemoteFile,
    is_minari_id,
    minari_id,
)
from trainers.data.checksums import sha256_of_file
from trainers.data.d4rl import D4RLFile, candidate_paths
from trainers.data.minari_datasets import (
    MinariData,
    is_minari_dataset,
    minari_dataset_dir,
    minari_root,
)
from trainers.data.trajectories import DatasetError, validate_arrays
from trainers.runtime.tasks import TASKS, Task

BLOCK = 1 << 16  # bytes per read from the socket: what a dropped connection can lose of the last read
BASE_URL_ENV = "LAMO_D4RL_BASE_URL"


class FetchError(RuntimeError):
    """A download failed or was refused; the message names the URL (or Minari id) and the file."""


class _BrokeOff(Exception):
    """The connection failed after the transfer had started: resume from what arrived."""


@dataclass(frozen=True)
class MinariTarget:
    dataset_id: str  # "minari:mujoco/hopper/medium-v0"


Target = RemoteFile | MinariTarget


# ------------------------------------------------------------------------------------------------ names

def resolve_name(name: str) -> Target:
    """What a fetch name refers to; FetchError listing the close matches when no registry knows it."""
    if name in D4RL_FILES:
        return D4RL_FILES[name]
    if is_minari_id(name):
        return MinariTarget(name)
    task = TASKS.get(name)
    if task is not None:
        if task.dataset_id in D4RL_FILES:
            return D4RL_FILES[task.dataset_id]
        if isinstance(task.dataset_reader, MinariData):
            return MinariTarget(task.dataset_id)
        raise FetchError(f"task {name!r} reads a file generated here, not one to download: "
                         f"python -m trainers.tools.make_dataset --task {name}")
    if any(task.dataset_id == MINARI_PREFIX + name for task in TASKS.values()):
        return MinariTarget(MINARI_PREFIX + name)  # a bare Minari id one of our tasks reads
    known = sorted({*D4RL_FILES, *TASKS, *(t.dataset_id for t in TASKS.values() if is_minari_id(t.dataset_id))})
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise FetchError(f"no D4RL or Minari dataset and no task is called {name!r}{hint} (names: D4RL ids such as "
                     f"hopper-medium-v2, task names such as hopper-medium, Minari ids as minari:<id>)")


def with_base_url(remote: RemoteFile, base_url: str | None) -> RemoteFile:
    """The same file from a mirror of D4RL's directory layout."""
    if not base_url:
        return remote
    return replace(remote, url=base_url.rstrip("/") + remote.url.removeprefix(D4RL_BASE_URL))


# ------------------------------------------------------------------------------------------------ D4RL files

def fetch_file(remote: RemoteFile, directory: str | os.PathLike | None = None, *, retries: int = 3,
               progress: bool = False, timeout: float = 30.0) -> Path:
    """Download `remote` into `directory` (default: the d4rl cache directory) as remote.file_name; return its
    path. A complete file already there is verified and kept."""
    destination = (Path(directory) if directory is not None else candidate_paths(remote.file_name)[0].parent)
    destination = destination.expanduser() / remote.file_name
    _ensure_writable(destination.parent)
    if destination.is_file():
        if remote.sha256 is not None and sha256_of_file(destination) != remote.sha256:
            raise FetchError(f"{destination} is already there but its SHA-256 is not {remote.sha256} "
                             f"({remote.url}); remove it to fetch it again")
        return destination
    partial = destination.with_name(destination.name + ".part")
    expected_size = remote.size
    for attempt in range(retries + 1):
        try:
            expected_size = _transfer(remote, partial, expected_size, progress, timeout)
            break
        except _BrokeOff as error:
            if attempt == retries:
                raise FetchError(f"{remote.url}: the transfer to {partial} broke off after {_size(partial):,} "
                                 f"bytes ({error}); run the same command again to resume from there") from None
            time.sleep(attempt + 1)  # then resume from what arrived
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
            raise FetchError(_no_network(remote, destination, error, partial)) from None
    try:
        _verify(partial, remote, expected_size)
    except FetchError:
        partial.unlink()  # a wrong file must not be resumed from, nor read
        raise
    os.replace(partial, destination)
    return destination


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _transfer(remote: RemoteFile, partial: Path, expected_size: int | None, progress: bool, timeout: float
              ) -> int | None:
    """One HTTP request continuing `partial`; returns the file's total size when the server says it."""
    have = partial.stat().st_size if partial.exists() else 0
    if expected_size is not None and have >= expected_size:
        return expected_size  # already complete (an earlier run stopped between transfer and verification)
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(remote.url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and have:  # nothing after `have`: the part file is whole
            total = _total_from_content_range(response.headers.get("Content-Range"))
            return total if total is not None else have
        if response.status_code not in (200, 206):
            raise FetchError(f"{remote.url}: the server answered {response.status_code} {response.reason} "
                             f"(for {partial.name.removesuffix('.part')})")
        if response.status_code == 200:  # the server ignored the Range: start over
            have = 0
            total = _int_or_none(response.headers.get("Content-Length"))
        else:
            total = _total_from_content_range(response.headers.get("Content-Range"))
        if expected_size is not None and total is not None and total != expected_size:
            raise FetchError(f"{remote.url}: the server offers {total:,} bytes but {remote.dataset_id} is "
                             f"{expected_size:,} bytes (trainers/data/catalog.py); not downloading it")
        columns = (TextColumn(f"[bold]{remote.file_name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())
        with open(partial, "ab" if have else "wb") as out, \
                Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
            job = bar.add_task("download", total=total, completed=have)
            try:
                for block in response.iter_content(BLOCK):
                    out.write(block)
                    bar.advance(job, len(block))
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.Timeout) as error:
                raise _BrokeOff(type(error).__name__) from None
    return total if total is not None else expected_size


def _verify(path: Path, remote: RemoteFile, expected_size: int | None) -> None:
    """Size, SHA-256 where known, D4RL's layout and the spaces of every task that reads the file (a hopper file
    with 12-d observations is refused here, not later by a sweep); the messages say the file is deleted, which the
    caller does."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise FetchError(f"{remote.url}: {path} has {size:,} bytes, expected {expected_size:,}; deleted")
    if remote.sha256 is not None:
        digest = sha256_of_file(path)
        if digest != remote.sha256:
            raise FetchError(f"{remote.url}: {path} has SHA-256 {digest}, expected {remote.sha256} "
                             f"(trainers/data/catalog.py); corrupt download, deleted")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            validate_arrays(f, str(path))
            for task in readers_of(remote):
                try:
                    validate_arrays(f, task.name, task.observation_dim, task.action_dim)
                except DatasetError as error:
                    raise FetchError(f"{remote.url}: {path} does not fit the tasks that read it ({error}); "
                                     f"deleted") from None
    except (OSError, DatasetError) as error:
        raise FetchError(f"{remote.url}: {path} is not a D4RL hdf5 file ({error}); deleted") from None


def readers_of(remote: RemoteFile) -> list[Task]:
    """The tasks that read this file: those that look its name up in the d4rl cache directory."""
    return [task for task in TASKS.values()
            if isinstance(task.dataset_reader, D4RLFile) and task.dataset_reader.file_name == remote.file_name]


def _no_network(remote: RemoteFile, destination: Path, error: Exception, partial: Path) -> str:
    kept = f"; the {_size(partial):,} bytes in {partial} are kept to resume from" if _size(partial) else ""
    return (f"cannot reach {urlparse(remote.url).hostname} for {remote.url} (no network? {type(error).__name__}); "
            f"to place it by hand, download that URL elsewhere and copy it to {destination}{kept}")


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes 100-999/1000" or "bytes */1000"
    return _int_or_none(value.rsplit("/", 1)[-1]) if value else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _ensure_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as error:
        raise FetchError(f"the dataset directory {directory} is not writable ({error.strerror}); set "
                         f"D4RL_DATASET_DIR / MINARI_DATASETS_PATH to a writable directory or pass --dir") from None


# ------------------------------------------------------------------------------------------------ Minari

def fetch_minari(dataset_id: str, *, download: Callable[[str], None] | None = None) -> Path:
    """Download a Minari dataset with Minari's own download into a scratch directory of its storage, then move
    it to $MINARI_DATASETS_PATH/<id> (an interrupted download leaves nothing a loader would read)."""
    bare = minari_id(dataset_id)
    destination = minari_dataset_dir(dataset_id)
    if is_minari_dataset(destination):
        return destination
    root = minari_root()
    _ensure_writable(root)
    if download is None:
        import minari

        remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
        endpoint = {"hf": os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
                    "gcp": "https://storage.googleapis.com"}.get(remote.split("://")[0])
        host = urlparse(endpoint).hostname if endpoint else None
        if host and not _reachable(host, urlparse(endpoint).port or 443):
            raise FetchError(f"cannot reach {host} for Minari dataset {bare} (remote {remote}; no network?); to "
                             f"place it by hand, run `minari download {bare}` elsewhere and copy "
                             f"~/.minari/datasets/{bare} to {destination}")
        download = minari.download_dataset
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=".fetch-"))
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(scratch)  # Minari reads it at each call
    try:
        download(bare)
        fetched = scratch / bare
        if not is_minari_dataset(fetched):
            raise FetchError(f"Minari's download of {bare} left no dataset in {fetched}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(fetched, destination)
    except FetchError:
        raise
    except Exception as error:  # Minari raises ValueError, HTTP and hub errors
        raise FetchError(f"Minari could not download {bare} into {destination}: {error}") from None
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
        shutil.rmtree(scratch, ignore_errors=True)
    return destination


def _reachable(host: str, port: int = 443, timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ command

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.tools.fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="D4RL ids, task names or minari:<id>")
    parser.add_argument("--dir", type=Path, help="directory for D4RL files (default: $D4RL_DATASET_DIR or "
                        "~/.d4rl/datasets)")
    parser.add_argument("--base-url", default=os.environ.get(BASE_URL_ENV),
                        help=f"a mirror of {D4RL_BASE_URL} (default: ${BASE_URL_ENV}, else D4RL's server)")
    parser.add_argument("--retries", type=int, default=3, help="resumptions after a dropped connection")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    failed = 0
    for name in args.names:
        try:
            target = resolve_name(name)
            if isinstance(target, MinariTarget):
                path = fetch_minari(target.dataset_id)
                print(f"{name}: {path}")
                continue
            remote = with_base_url(target, args.base_url)
            path = fetch_file(remote, args.dir, retries=args.retries, progress=console.is_terminal)
            size, digest = path.stat().st_size, sha256_of_file(path)
            unknown = " (not in trainers/data/catalog.py yet: record them there)" \
                if target.size is None or target.sha256 is None else ""
            print(f"{name}: {path} ({size:,} bytes, sha256 {digest}){unknown}")
        except FetchError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fetching datasets by name, against a real HTTP server on 127.0.0.1 (stdlib http.server with Range support)
serving D4RL-layout files generated here: a normal fetch, a dropped connection that resumes, corrupt files that
are refused and leave nothing behind, an unreachable host, a directory that cannot be written."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_arrays

from trainers.data.catalog import D4RL_FILES, RemoteFile, is_minari_id
from trainers.data.d4rl import D4RLFile, write_d4rl_dataset
from trainers.data.loading import load_task_dataset
from trainers.data.minari_datasets import MinariData
from trainers.runtime.tasks import TASKS, get_task
from trainers.tools.fetch import (
    FetchError,
    fetch_file,
    fetch_minari,
    main,
    resolve_name,
)


class Server:
    """Serves `files` (URL path -> bytes). `drop_after[path] = n` makes the next response to that path declare
    the full length, send n bytes and close the connection, as a dropped transfer does. `requests` records
    (path, Range header) of every GET."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.drop_after.pop(self.path, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args):
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            daemon_threads = False  # server_close() waits for every handler: none outlives its test

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is expected here
                    super().handle_error(request, client_address)

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with Server() as running:
        yield running


@pytest.fixture(scope="module")
def hopper_file(tmp_path_factory) -> bytes:
    """A D4RL-layout file with Hopper's spaces (11-d observations, 3-d actions), ~0.5 MB."""
    path = tmp_path_factory.mktemp("src") / "hopper.hdf5"
    write_d4rl_dataset(path, synthetic_arrays([400] * 25, obs_dim=11, act_dim=3))
    return path.read_bytes()


def remote(server: Server, data: bytes, *, known: bool = True, name: str = "hopper_medium-v2.hdf5") -> RemoteFile:
    server.files[f"/{name}"] = data
    return RemoteFile("hopper-medium-v2", f"{server.url}/{name}", size=len(data) if known else None,
                      sha256=hashlib.sha256(data).hexdigest() if known else None)


def test_fetch_writes_the_whole_file_and_nothing_else(server, hopper_file, tmp_path):
    path = fetch_file(remote(server, hopper_file), tmp_path)
    assert path == tmp_path / "hopper_medium-v2.hdf5" and path.read_bytes() == hopper_file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hopper_medium-v2.hdf5"]
    assert server.requests == [("/hopper_medium-v2.hdf5", None)]
    fetch_file(remote(server, hopper_file), tmp_path)  # already there: verified, not downloaded again
    assert len(server.requests) == 1


def test_a_dropped_connection_resumes_with_a_range_request(server, hopper_file, tmp_path):
    target = remote(server, hopper_file, known=False)  # sizes from Content-Length, as for D4RL's real files
    server.drop_after["/hopper_medium-v2.hdf5"] = 200_000
    path = fetch_file(target, tmp_path, retries=2)
    assert path.read_bytes() == hopper_file
    # Resumed from what was written: whole reads of 64 KiB; the cut one is read again.
    assert server.requests == [("/hopper_medium-v2.hdf5", None), ("/hopper_medium-v2.hdf5", "bytes=196608-")]


def test_an_interrupted_fetch_resumes_in_the_next_run(server, hopper_file, tmp_path):
    target = remote(server, hopper_file)
    server.drop_after["/hopper_medium-v2.hdf5"] = 140_000
    with pytest.raises(FetchError, match="broke off after 131,072 bytes.*run the same command again to resume"):
        fetch_file(target, tmp_path, retries=0)
    assert not (tmp_path / "hopper_medium-v2.hdf5").exists()  # never read as a dataset
    assert (tmp_path / "hopper_medium-v2.hdf5.part").stat().st_size == 131_072
    assert fetch_file(target, tmp_path).read_bytes() == hopper_file
    assert server.requests[-1] == ("/hopper_medium-v2.hdf5", "bytes=131072-")
    assert not (tmp_path / "hopper_medium-v2.hdf5.part").exists()


def test_a_part_file_that_is_already_whole_is_verified_and_moved(server, hopper_file, tmp_path):
    (tmp_path / "hopper_medium-v2.hdf5.part").write_bytes(hopper_file)  # a run stopped before its rename
    assert fetch_file(remote(server, hopper_file, known=False), tmp_path).read_bytes() == hopper_file
    assert server.requests == [("/hopper_medium-v2.hdf5", f"bytes={len(hopper_file)}-")]


@pytest.mark.parametrize("damage, known, message", [
    ("flip", True, "has SHA-256 .*, expected .*corrupt download, deleted"),
    ("truncate", False, "is not a D4RL hdf5 file"),  # no size or digest known: the layout check catches it
    ("garbage", False, "is not a D4RL hdf5 file"),
])
def test_a_corrupt_download_is_refused_and_leaves_nothing(server, hopper_file, tmp_path, damage, known, message):
    target = remote(server, hopper_file, known=known)
    served = bytearray(hopper_file)
    if damage == "flip":
        served[len(served) // 2] ^= 0xFF
    elif damage == "truncate":
        served = served[: len(served) // 2]
    else:
        served = bytearray(np.random.default_rng(0).bytes(50_000))
    server.files["/hopper_medium-v2.hdf5"] = bytes(served)
    with pytest.raises(FetchError, match=message) as error:
        fetch_file(target, tmp_path)
    assert target.url in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_file_of_another_environment_is_refused_under_hopper_s_name(server, tmp_path, capsys):
    """D4RL's layout, but 12-d observations: no task reading hopper_medium-v2.hdf5 could use it."""
    source = tmp_path / "src" / "other.hdf5"
    write_d4rl_dataset(source, synthetic_arrays([100] * 5, obs_dim=12, act_dim=3))
    server.files["/gym_mujoco_v2/hopper_medium-v2.hdf5"] = source.read_bytes()
    assert main(["hopper-medium-v2", "--base-url", server.url, "--dir", str(tmp_path / "d4rl")]) == 2
    err = capsys.readouterr().err
    assert "does not fit the tasks that read it (hopper-medium: observations: expected shape (N, 11) for this " \
           "task, got (500, 12)); deleted" in err
    assert list((tmp_path / "d4rl").iterdir()) == []  # neither the file nor its .part


def test_a_wrong_size_on_the_server_is_refused_before_downloading(server, hopper_file, tmp_path):
    target = remote(server, hopper_file)
    server.files["/hopper_medium-v2.hdf5"] = hopper_file + b"extra"
    with pytest.raises(FetchError, match="offers .* bytes but hopper-medium-v2 is"):
        fetch_file(target, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_host_says_so_in_one_line(tmp_path, capsys):
    assert main(["hopper-medium-v2", "--base-url", f"http://127.0.0.1:{_closed_port()}", "--dir", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: cannot reach 127.0.0.1") and "no network?" in lines[0]
    assert "gym_mujoco_v2/hopper_medium-v2.hdf5" in lines[0]
    assert f"copy it to {tmp_path / 'hopper_medium-v2.hdf5'}" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_cannot_be_written_is_named(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["hopper-medium-v2", "--dir", str(blocker / "datasets")]) == 2
    assert f"the dataset directory {blocker / 'datasets'} is not writable" in capsys.readouterr().err


def test_cli_fetches_a_task_by_name_into_the_d4rl_cache_where_the_task_finds_it(server, hopper_file, d4rl_dir,
                                                                                  capsys):
    server.files["/gym_mujoco_v2/hopper_medium-v2.hdf5"] = hopper_file
    assert main(["hopper-medium", "--base-url", server.url]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {hashlib.sha256(hopper_file).hexdigest()}" in out and "record them there" in out
    assert (d4rl_dir / "hopper_medium-v2.hdf5").read_bytes() == hopper_file
    dataset = load_task_dataset(get_task("hopper-medium"))
    assert dataset.name == "hopper-medium-v2" and dataset.num_episodes == 25


def test_names_resolve_to_the_table_and_unknown_ones_list_close_matches():
    assert resolve_name("hopper-medium-v2") is resolve_name("hopper-medium") is D4RL_FILES["hopper-medium-v2"]
    assert resolve_name("kitchen-partial").file_name == "kitchen_microwave_kettle_light_slider-v0.hdf5"
    assert resolve_name("hopper-medium-minari").dataset_id == "minari:mujoco/hopper/medium-v0"
    assert resolve_name("mujoco/hopper/medium-v0").dataset_id == "minari:mujoco/hopper/medium-v0"
    with pytest.raises(FetchError, match="close matches: hopper-medium-v2"):
        resolve_name("hopper-meduim-v2")
    with pytest.raises(FetchError, match="generated here.*make_dataset --task reacher2d-medium"):
        resolve_name("reacher2d-medium")


def test_every_external_task_file_is_the_last_part_of_its_registered_url():
    for task in TASKS.values():
        reader = task.dataset_reader
        if task.dataset_id in D4RL_FILES:
            entry = D4RL_FILES[task.dataset_id]
            assert reader.file_name == entry.file_name and entry.url.endswith("/" + reader.file_name)
            assert entry.url.startswith("http://rail.eecs.berkeley.edu/datasets/offline_rl/")
        elif isinstance(reader, D4RLFile):  # a file of D4RL's layout that no registry has: generated here
            assert task.generated_by is not None, task.name
        elif task.dataset_id:  # the other registry
            assert isinstance(reader, MinariData) and is_minari_id(task.dataset_id), task.name


# --- Minari ---------------------------------------------------------------------------------------------------

@pytest.fixture
def minari_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def test_minari_fetch_without_network_says_so_in_one_line(minari_root, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert main(["minari:mujoco/hopper/medium-v0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no network?" in lines[0] and "minari download mujoco/hopper/medium-v0" in lines[0]
    assert str(minari_root / "mujoco" / "hopper" / "medium-v0") in lines[0]


def _fake_dataset(root: Path, dataset_id: str) -> None:
    data = root / dataset_id / "data"
    data.mkdir(parents=True)
    (data / "metadata.json").write_text("{}")
    (data / "main_data.hdf5").write_bytes(b"episodes")


def test_minari_fetch_moves_a_finished_download_into_place(minari_root):
    # Stand-in for minari.download_dataset (no network here): it writes where Minari would, $MINARI_DATASETS_PATH.
    def download(dataset_id: str) -> None:
        import os

        _fake_dataset(Path(os.environ["MINARI_DATASETS_PATH"]), dataset_id)

    path = fetch_minari("minari:mujoco/hopper/medium-v0", download=download)
    assert path == minari_root / "mujoco" / "hopper" / "medium-v0"
    assert (path / "data" / "main_data.hdf5").read_bytes() == b"episodes"
    assert [p.name for p in minari_root.iterdir()] == ["mujoco"]  # the scratch directory is gone


def test_an_interrupted_minari_download_leaves_nothing_a_loader_reads(minari_root):
    def download(dataset_id: str) -> None:
        import os

        _fake_dataset(Path(os.environ["MINARI_DATASETS_PATH"]), dataset_id)
        raise ConnectionError("connection reset while downloading main_data.hdf5")

    with pytest.raises(FetchError, match="Minari could not download mujoco/hopper/medium-v0.*connection reset"):
        fetch_minari("minari:mujoco/hopper/medium-v0", download=download)
    assert list(minari_root.iterdir()) == []
    shutil.rmtree(minari_root)

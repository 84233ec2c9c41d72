"""Text corpora for LaMo's auxiliary language loss, as a config choice.

LaMo co-trains its Decision Transformer with next-token prediction on WikiText-103. A corpus is 'wikitext-103' or
'wikitext-2' (through the `datasets` package: network or its local cache), a directory of .txt files or one .txt
file, or 'builtin': text every Python install has — the standard library's documentation, collected once into
the LaMo cache. `corpus_identity` is what a corpus' documents depend on, for the token cache's keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from trainers.data.checksums import sha256_of_file
from trainers.sequence.language.hub import env_flag, hub_reachable
from trainers.sequence.language.token_cache import default_cache_dir

WIKITEXT = {"wikitext-103": "wikitext-103-raw-v1", "wikitext-2": "wikitext-2-raw-v1"}
CORPUS_FORMS = "'builtin', 'wikitext-103', 'wikitext-2', a directory of .txt files (recursive) or a .txt file"


def load_corpus(spec: str | Path, *, cache_dir: str | Path | None = None, split: str = "train") -> list[str]:
    """The documents of a corpus: 'builtin', 'wikitext-103', 'wikitext-2', a directory of .txt files (one
    document per file, recursive, sorted by relative path) or one .txt file. Names win over same-named paths
    (write ./builtin for a directory called builtin)."""
    name = str(spec)
    if name == "builtin":
        return builtin_corpus(cache_dir)
    if name in WIKITEXT:
        return _wikitext(WIKITEXT[name], split)
    documents = []
    for file in corpus_files(name):
        try:
            documents.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"corpus file {file} is not UTF-8 text: {error}") from None
    return [document for document in documents if document]


def corpus_files(spec: str | Path) -> list[Path]:
    """The .txt files of a directory corpus (recursive, sorted by relative path) or the one file of a file
    corpus, in document order."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(path.rglob("*.txt"), key=lambda file: file.relative_to(path).as_posix())
    elif path.is_file() and path.suffix == ".txt":
        files = [path]
    else:
        what = "is not a .txt file" if path.exists() else "is neither a corpus name nor an existing path"
        raise ValueError(f"corpus {str(spec)!r} {what}; accepted: {CORPUS_FORMS}")
    if not files:
        raise ValueError(f"corpus directory {path} holds no .txt files; accepted: {CORPUS_FORMS}")
    return files


def corpus_identity(spec: str | Path, cache_dir: str | Path | None = None) -> str:
    """What a corpus' documents depend on, for cache keys: the bytes (and relative paths, which fix the order)
    of a text corpus' files, the builtin corpus' cached text, or WikiText's immutable release name."""
    name = str(spec)
    if name in WIKITEXT:
        return f"hf-datasets:wikitext/{WIKITEXT[name]}/train"
    if name == "builtin":
        return f"builtin:{sha256_of_file(builtin_corpus_file(cache_dir))}"
    path = Path(name).expanduser()
    root = path if path.is_dir() else path.parent
    digest = hashlib.sha256()
    for file in corpus_files(path):
        digest.update(f"{file.relative_to(root).as_posix()}\0{sha256_of_file(file)}\n".encode())
    return f"text:{digest.hexdigest()}"


def check_corpus(spec: str | Path) -> None:
    """Raise ValueError when `spec` names no usable corpus, without reading it (a sweep's pre-flight)."""
    name = str(spec)
    if name == "builtin" or name in WIKITEXT:  # WikiText's availability offline is reported by _wikitext
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if next(path.rglob("*.txt"), None) is None:
            raise ValueError(f"corpus directory {path} holds no .txt files; accepted: {CORPUS_FORMS}")
    elif not (path.is_file() and path.suffix == ".txt"):
        what = "is not a .txt file" if path.exists() else "is neither a corpus name nor an existing path"
        raise ValueError(f"corpus {name!r} {what}; accepted: {CORPUS_FORMS}")


def _wikitext(config_name: str, split: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise ImportError("WikiText needs the `datasets` package: pip install 'lamo-sweeps[wikitext]'") from None
    import huggingface_hub.constants

    forced = env_flag("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    offline = forced or not hub_reachable()
    try:
        # datasets and huggingface_hub read HF_*_OFFLINE once, at import: set their flags for this call, so the
        # environment (or the failed probe) applies even when they were imported before it changed.
        flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                 (huggingface_hub.constants, "HF_HUB_OFFLINE")] if offline else []
        with _attributes_set(flags, True):
            lines = datasets.load_dataset("wikitext", config_name, split=split)["text"]
    except Exception as error:
        if not offline:
            raise
        why = "offline mode is set (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if forced else "the Hub is unreachable"
        raise RuntimeError(f"cannot load WikiText ({config_name}): {why} and it is not in the local datasets "
                           f"cache. Use the corpus 'builtin', a directory of .txt files or a .txt file instead, or "
                           f"run once with network access to fill the cache ({error})") from error
    return _wikitext_articles(lines)


@contextlib.contextmanager
def _attributes_set(targets: list[tuple[Any, str]], value: Any) -> Iterator[None]:
    """Set each (module, attribute) to `value` for the duration, then restore what was there."""
    saved = [(module, name, getattr(module, name)) for module, name in targets]
    try:
        for module, name in targets:
            setattr(module, name, value)
        yield
    finally:
        for module, name, previous in saved:
            setattr(module, name, previous)


def _wikitext_articles(lines: Iterable[str]) -> list[str]:
    """WikiText's rows are lines: regroup them into articles (" = Title = "; sections are " = = Section = = ")
    so that EOS separates articles, as in GPT-2's training data, rather than paragraphs."""
    articles: list[list[str]] = [[]]
    for line in lines:
        if re.match(r"^ = [^=].* = $", line.rstrip("\n")) and articles[-1]:
            articles.append([])
        articles[-1].append(line)
    return [text for text in map("".join, articles) if text.strip()]


def builtin_corpus(cache_dir: str | Path | None = None) -> list[str]:
    """The standard library's docstrings (one document per module) and help() topics: ~1.9 MB of technical
    English. Cached as JSON (in cache_dir, else $LAMO_CACHE_DIR, else ~/.cache/lamo-sweeps) under a key of the
    Python build and of the collector's own source."""
    return json.loads(builtin_corpus_file(cache_dir).read_text(encoding="utf-8"))


def builtin_corpus_file(cache_dir: str | Path | None = None) -> Path:
    """The builtin corpus' JSON cache file, collected first if it is not there yet."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source = inspect.getsource(_collect_stdlib_docs)
    key = hashlib.sha256(f"{sys.version}|{sys.platform}|{sys.base_prefix}|{source}".encode()).hexdigest()[:16]
    path = cache / f"builtin-corpus-{key}.json"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        # A fresh isolated interpreter (-I: no user site, no PYTHON* variables; -S: no site-packages) keeps the
        # side effects of importing the whole stdlib out of this process, and the text independent of how this
        # process was started (-OO strips docstrings) or what it imported.
        done = subprocess.run([sys.executable, "-I", "-S", "-c", f"{source}\n_collect_stdlib_docs({str(partial)!r})"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"collecting the builtin corpus failed: {done.stderr[-2000:]}")
        os.replace(partial, path)  # atomic: concurrent trials never read a half-written cache
    return path


def _collect_stdlib_docs(out_path: str) -> None:
    """Runs alone in a fresh interpreter (see builtin_corpus), so it imports what it needs itself."""
    import importlib  # noqa: E401
    import inspect
    import json
    import os
    import pkgutil
    import sys
    import sysconfig
    import warnings
    warnings.simplefilter("ignore")  # deprecated modules warn on import
    # Side effects on import (antigravity opens a browser, this prints), GUI toolkits, test suites, readline
    # (touches the terminal); private modules (_x, __main__) run code or duplicate the public ones.
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "tests", "lib2to3",
            "ensurepip", "readline", "pydoc_data"}
    modules, seen, documents = [], set(), []

    def visit(names):  # noqa: ANN001, ANN202 (no typing imports in the fresh interpreter)
        for name in sorted(names):
            if any(part.startswith("_") or part in skip for part in name.split(".")):
                continue
            try:
                module = importlib.import_module(name)
            except (Exception, SystemExit):  # other platforms' modules (winreg), missing system libraries
                continue
            modules.append(module)
            if hasattr(module, "__path__"):
                visit(info.name for info in pkgutil.iter_modules(module.__path__, name + "."))

    def add(obj, parts):  # noqa: ANN001, ANN202
        text = getattr(obj, "__doc__", None)
        if isinstance(text, str) and (text := inspect.cleandoc(text)) and text not in seen:
            seen.add(text)
            parts.append(text)

    stdlib = sysconfig.get_paths()["stdlib"]
    visit({info.name for info in pkgutil.iter_modules([stdlib, os.path.join(stdlib, "lib-dynload")])}
          | set(sys.builtin_module_names))
    for module in modules:
        parts = []
        add(module, parts)
        for _, obj in sorted(vars(module).items()):
            # What the module defines, not what it re-imports (os re-exports posix, ...).
            if (inspect.isclass(obj) or inspect.isroutine(obj)) and getattr(obj, "__module__", None) == module.__name__:
                add(obj, parts)
                for _, member in sorted(vars(obj).items()) if inspect.isclass(obj) else ():
                    if inspect.isroutine(member) or isinstance(member, property):
                        add(member, parts)
        if parts:
            documents.append("\n\n".join(parts))
    import pydoc_data.topics  # help()'s language-reference pages: prose rather than docstrings
    documents += [pydoc_data.topics.topics[topic] for topic in sorted(pydoc_data.topics.topics)]
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(documents, out)

"""Pre-trained GPT-2s, from a local directory or the Hugging Face Hub, failing fast and clearly offline.

`load_pretrained_gpt2` gives the sequence models' backbone (trainers/sequence/algorithm.py); `pretrained_gpt2_config`
checks one before a sweep starts. A name is a local path when one exists (or looks like one), else a hub id;
offline, or with the hub unreachable, only the local cache is asked, and the error names the way out: pre-train
a local model (trainers/sequence/language/pretrain.py).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

# transformers is imported where a GPT-2 is built (~3 s): the sweep driver and every non-GPT trial load this
# module without it.
if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, GPT2Model

# GPT-2's gelu_new, same formula, one fused kernel (a DT-size forward went 77 → 41 ms on CPU).
FAST_GELU = "gelu_pytorch_tanh"
PRETRAIN_HINT = "pre-train a local model with `python -m trainers.sequence.language pretrain --out DIR` and pass DIR"
T = TypeVar("T")


def env_flag(*names: str) -> bool:
    return any(os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for name in names)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connect to the hub (or the HTTPS proxy): offline, huggingface_hub's own retries with back-off
    take ~25 s to give up."""
    url = urlparse(os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
                   or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
        return True
    except (OSError, TypeError, ValueError):
        return False


def from_hub(load: Callable[..., T], name: str) -> T:
    """`load(**kwargs)` for a hub id; offline it looks only in the local cache and names the way out."""
    offline = env_flag("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") or not hub_reachable()
    try:
        return load(local_files_only=True) if offline else load()
    except OSError as error:
        why = "is offline or unreachable and it is not in the local cache" if offline else "does not have it"
        raise OSError(f"{name!r} is not a local directory and the Hugging Face Hub {why}; {PRETRAIN_HINT} "
                      f"({error})") from error


def local_path(name_or_path: str | Path) -> Path | None:
    """The path meant, or None for a hub id ('name' or 'owner/name' that does not exist locally)."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if isinstance(name_or_path, Path) or path.exists() or name.startswith(("/", ".", "~")) \
            or name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return path
    return None


def pretrained_gpt2_config(name_or_path: str | Path) -> dict:
    """The config.json of a GPT-2 given as a local directory or a hub id; a clear error when it is missing, is
    not a model directory, or is not a GPT-2 (used to check a sweep's backbones before anything starts)."""
    name, path = str(name_or_path), local_path(name_or_path)
    if path is None:
        from transformers import AutoConfig

        config = from_hub(lambda **kw: AutoConfig.from_pretrained(name, **kw), name).to_dict()
        where = f"hub model {name!r}"
    elif not path.exists():
        raise FileNotFoundError(f"pre-trained model path {path} does not exist; {PRETRAIN_HINT}")
    elif not (path / "config.json").is_file():
        found = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else "a file, not a directory"
        raise ValueError(f"{path} is not a pre-trained model directory: no config.json (found: {found})")
    else:
        config, where = json.loads((path / "config.json").read_text()), str(path)
    if config.get("model_type") != "gpt2":
        raise ValueError(f"{where} holds a model of type {config.get('model_type')!r} (config.json), not 'gpt2'")
    return config


def load_pretrained_gpt2(name_or_path: str | Path, random_init: bool = False, dropout: float | None = None, *,
                         lm_head: bool = False, **config_overrides: Any) -> GPT2Model | GPT2LMHeadModel:
    """GPT-2 from a local directory or a hub id ('gpt2': needs network or the local HF cache); GPT2Model, or
    GPT2LMHeadModel with lm_head=True. random_init: its architecture with fresh weights (torch's RNG);
    dropout sets all three pdrop; config_overrides go to the config as from_pretrained's kwargs do."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    cls = GPT2LMHeadModel if lm_head else GPT2Model
    name, path = str(name_or_path), local_path(name_or_path)
    config = pretrained_gpt2_config(name_or_path)
    if config.get("activation_function", "gelu_new") == "gelu_new":  # never swap a genuinely different one
        config_overrides.setdefault("activation_function", FAST_GELU)
    if dropout is not None:
        config_overrides.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    if random_init:
        return cls(GPT2Config.from_dict({**config, **config_overrides}))
    if path is None:
        return from_hub(lambda **kw: cls.from_pretrained(name, **config_overrides, **kw), name)
    return cls.from_pretrained(path, **config_overrides)

"""Find a cross-encoder checkpoint (short name, local folder or hub id) and load it with Sentence Transformers."""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from ettin_rerank.errors import ModelLoadError, ModelNotFoundError
from ettin_rerank.models import ETTIN_SHAPES, ettin_shape

if TYPE_CHECKING:  # imported lazily at run time: it is heavy
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

_CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


@dataclass(frozen=True)
class HubOptions:
    """How to reach the Hugging Face hub: the same arguments Sentence Transformers takes."""

    revision: str | None = None
    token: bool | str | None = None
    cache_folder: str | None = None
    local_files_only: bool = False


def hub_id_for(model: str) -> str | None:
    """The hub id behind ``model`` if it is an Ettin short name (``"17m"``), else ``None``."""
    try:
        return ettin_shape(model).hub_id
    except ValueError:
        return None


def resolve_model_path(model: str | os.PathLike[str], hub: HubOptions | None = None) -> Path:
    """Turn a short name, a local folder or a hub id into a local checkpoint folder.

    Hub ids go through the normal Hugging Face cache (``revision``, ``token``, ``HF_HUB_OFFLINE``). Offline, only
    the cache is read, so a missing model fails at once instead of retrying.

    Raises:
        TypeError: ``model`` is not a string or path.
        ModelNotFoundError: nothing was found; the message says what was tried.
    """
    if not isinstance(model, (str, os.PathLike)):
        msg = f"model must be an Ettin size ({', '.join(ETTIN_SHAPES)}), a folder or a hub id, but got {model!r}"
        raise TypeError(msg)
    if not str(model).strip():
        msg = f"model must not be empty; use an Ettin size ({', '.join(ETTIN_SHAPES)}), a folder or a hub id"
        raise ValueError(msg)
    hub = hub or HubOptions()
    name = str(model)
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    repo_id = hub_id_for(name) or name
    if "/" not in repo_id or local.suffix or name.startswith((".", "/", "~")):
        msg = (
            f"model {name!r} is not an Ettin size ({', '.join(ETTIN_SHAPES)}), not an existing folder "
            "and not a hub id of the form 'owner/name'"
        )
        raise ModelNotFoundError(msg)
    return _download(repo_id, name, hub)


def _download(repo_id: str, name: str, hub: HubOptions) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = hub.local_files_only or _hub_offline()
    if not offline and not _hub_reachable():
        logger.info("The Hugging Face hub is not reachable: looking for %s in the local cache only", repo_id)
        offline = True
    try:
        path = snapshot_download(
            repo_id,
            revision=hub.revision,
            token=hub.token,
            cache_dir=hub.cache_folder,
            local_files_only=offline,
        )
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        where = "in the local Hugging Face cache (offline: the hub was not asked)" if offline else (
            "on the Hugging Face hub or in its cache")
        revision = f" at revision {hub.revision!r}" if hub.revision else ""
        msg = f"model {name!r} was not found: not a local folder, and {repo_id!r}{revision} is not {where}"
        raise ModelNotFoundError(msg) from error
    return Path(path)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so an unreachable hub costs seconds, not a retry loop."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def check_checkpoint_folder(folder: Path) -> None:
    """Fail early, naming the file, when a folder cannot be a cross-encoder checkpoint."""
    modules_file = folder / "modules.json"
    if modules_file.exists():
        try:
            modules = json.loads(modules_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            msg = f"{modules_file} is not valid JSON: {error}"
            raise ModelLoadError(msg) from error
        transformer = next((m for m in modules if m.get("type", "").endswith("Transformer")), None)
        if transformer is None:
            msg = f"{modules_file} lists no Transformer module, so {folder} is not a text cross-encoder"
            raise ModelLoadError(msg)
        _check_transformer_folder(folder / transformer.get("path", ""))
    else:
        _check_transformer_folder(folder)


def _check_transformer_folder(folder: Path) -> None:
    config = folder / "config.json"
    if not config.exists():
        msg = f"{folder} has no config.json: not a Sentence Transformers or transformers checkpoint"
        raise ModelLoadError(msg)
    try:
        json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        msg = f"{config} is not valid JSON: {error}"
        raise ModelLoadError(msg) from error
    if not any((folder / name).exists() for name in _CHECKPOINT_FILES):
        msg = f"{folder} has no weights file (looked for {', '.join(_CHECKPOINT_FILES)})"
        raise ModelLoadError(msg)
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        msg = f"{folder} has no tokenizer files (tokenizer.json, tokenizer_config.json or vocab.txt)"
        raise ModelLoadError(msg)


def load_cross_encoder(
    folder: Path, *, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False
) -> CrossEncoder:
    """Load a checkpoint folder with Sentence Transformers' own ``CrossEncoder`` (our reference)."""
    from sentence_transformers import CrossEncoder

    check_checkpoint_folder(folder)
    try:
        model = CrossEncoder(
            str(folder),
            device=str(device),
            trust_remote_code=trust_remote_code,
            local_files_only=True,
            model_kwargs={"dtype": dtype, "attn_implementation": "sdpa"},
            activation_fn=torch.nn.Identity(),
        )
    except Exception as error:  # any parsing failure deep in transformers/safetensors: name the folder
        msg = f"could not load the cross-encoder in {folder}: {type(error).__name__}: {error}"
        raise ModelLoadError(msg) from error
    return model.eval()

"""Find a cross-encoder checkpoint (short name, local folder or hub id) and load it with Sentence Transformers."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ettin_rerank.errors import ModelLoadError, ModelNotFoundError
from ettin_rerank.models import ETTIN_SHAPES, ettin_shape

if TYPE_CHECKING:  # imported lazily at run time: it is heavy
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

_CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")
HUB_TIMEOUT_S = 3.0
"""Each phase of the hub check (connect, send, first byte of the answer) must finish within this."""
_HARMLESS_UNEXPECTED = re.compile(r"(^|\.)(pooler\.|position_ids$|num_batches_tracked$)")
"""Checkpoint tensors a model may ignore: an unused pooler, position-id buffers of older BERTs, batch-norm counters."""


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
    if local.exists():
        msg = f"model {name!r} is a file, not a checkpoint folder"
        raise ModelNotFoundError(msg)
    if not _HUB_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
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
    unreachable = None
    if not offline:
        unreachable = _hub_unreachable_reason()
        if unreachable:
            logger.info("The Hugging Face hub %s: looking for %s in the local cache only", unreachable, repo_id)
            offline = True
    try:
        path = snapshot_download(
            repo_id,
            revision=hub.revision,
            token=hub.token,
            cache_dir=hub.cache_folder,
            local_files_only=offline,
            etag_timeout=10,
        )
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        if unreachable:
            where = f"in the local Hugging Face cache (the hub {unreachable})"
        elif offline:
            where = "in the local Hugging Face cache (offline: the hub was not asked)"
        else:
            where = "on the Hugging Face hub or in its cache"
        revision = f" at revision {hub.revision!r}" if hub.revision else ""
        msg = f"model {name!r} was not found: not a local folder, and {repo_id!r}{revision} is not {where}"
        raise ModelNotFoundError(msg) from error
    return Path(path)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_unreachable_reason() -> str | None:
    """``None`` if the hub endpoint answers an HTTP request in time, else why not (one phrase).

    Connect, send and the first byte of the answer are each bounded, so a proxy or firewall that accepts the
    connection and then never answers costs seconds, not a hang.
    """
    import httpx

    timeout = HUB_TIMEOUT_S
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        httpx.head(f"{endpoint}/api/whoami-v2", timeout=httpx.Timeout(timeout))
    except httpx.TimeoutException:
        return f"at {endpoint} did not answer within {timeout:g} s"
    except httpx.HTTPError as error:
        return f"at {endpoint} is not reachable ({type(error).__name__})"
    return None


def check_checkpoint_folder(folder: Path) -> None:
    """Fail early, naming the file, when a folder cannot be a cross-encoder checkpoint."""
    modules_file = folder / "modules.json"
    if modules_file.exists():
        modules = _read_json(modules_file)
        if not isinstance(modules, list) or not all(
            isinstance(m, dict) and isinstance(m.get("type"), str) and isinstance(m.get("path", ""), str)
            for m in modules
        ):
            msg = (f"{modules_file} must be a list of modules, each an object with a string 'type' and 'path' "
                   "(as Sentence Transformers writes it)")
            raise ModelLoadError(msg)
        transformer = next((m for m in modules if m["type"].endswith("Transformer")), None)
        if transformer is None:
            msg = f"{modules_file} lists no Transformer module, so {folder} is not a text cross-encoder"
            raise ModelLoadError(msg)
        _check_transformer_folder(folder / transformer.get("path", ""))
    else:
        _check_transformer_folder(folder)


def _read_json(path: Path) -> Any:
    _check_readable(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        msg = f"{path} is not valid JSON: {error}"
        raise ModelLoadError(msg) from error


def _check_readable(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except PermissionError as error:
        msg = f"{path} cannot be read: permission denied (check the file's owner and mode)"
        raise ModelLoadError(msg) from error
    except IsADirectoryError as error:
        msg = f"{path} is a folder, not a file"
        raise ModelLoadError(msg) from error
    except OSError as error:
        msg = f"{path} cannot be read: {error.strerror or error}"
        raise ModelLoadError(msg) from error


def _check_transformer_folder(folder: Path) -> None:
    config = folder / "config.json"
    if not config.exists():
        msg = f"{folder} has no config.json: not a Sentence Transformers or transformers checkpoint"
        raise ModelLoadError(msg)
    if not isinstance(_read_json(config), dict):
        msg = f"{config} must hold a JSON object"
        raise ModelLoadError(msg)
    weights = [folder / name for name in _CHECKPOINT_FILES if (folder / name).exists()]
    if not weights:
        msg = f"{folder} has no weights file (looked for {', '.join(_CHECKPOINT_FILES)})"
        raise ModelLoadError(msg)
    for path in weights:
        _check_readable(path)
    tokenizer_files = [folder / n for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
                       if (folder / n).exists()]
    if not tokenizer_files:
        msg = f"{folder} has no tokenizer files (tokenizer.json, tokenizer_config.json or vocab.txt)"
        raise ModelLoadError(msg)
    for path in tokenizer_files:
        _check_readable(path)


def load_cross_encoder(
    folder: Path, *, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False
) -> CrossEncoder:
    """Load a checkpoint folder with Sentence Transformers' own ``CrossEncoder`` (our reference)."""
    from sentence_transformers import CrossEncoder

    check_checkpoint_folder(folder)
    try:
        with _weight_reports() as reports, quiet_progress_bars(not logger.isEnabledFor(logging.INFO)):
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
    _check_weight_reports(folder, reports)
    return model.eval()


_REPORTS = threading.local()
_PATCH_LOCK = threading.Lock()
_QUIET = threading.local()
_QUIET_HOOK: list[Any] = []


@contextmanager
def quiet_progress_bars(quiet: bool = True) -> Iterator[None]:
    """Hide the progress bars transformers draws in this thread while the body runs ("Loading weights 0/14 ...",
    "Writing model shards"): loading a checkpoint is not long work worth a bar. Other threads, and Hugging Face
    hub downloads (their bars have a size), are left alone. ``quiet=False`` does nothing (``-v``, logging at
    INFO: show them)."""
    if not quiet:
        yield
        return
    _install_quiet_hook()
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        yield
    finally:
        _QUIET.depth -= 1


def _install_quiet_hook() -> None:
    """Install, once, a transformers tqdm hook that draws nothing in a quiet thread (chained to any earlier hook)."""
    from transformers.utils import logging as transformers_logging

    with _PATCH_LOCK:
        if _QUIET_HOOK:
            return
        previous = transformers_logging.set_tqdm_hook(None)

        def hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if getattr(_QUIET, "depth", 0):
                return transformers_logging.EmptyTqdm(*args, **kwargs)
            return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

        transformers_logging.set_tqdm_hook(hook)
        _QUIET_HOOK.append(hook)


@contextmanager
def _weight_reports() -> Iterator[list[Any]]:
    """Collect transformers' weight-loading reports (missing / unexpected tensors) made in this thread.

    transformers logs them as a warning table and goes on with randomly initialised weights; we read the same
    report as data instead, so that :func:`load_cross_encoder` can refuse a model that is partly random.
    """
    from transformers import modeling_utils

    with _PATCH_LOCK:
        original = modeling_utils.log_state_dict_report
        if not getattr(original, "_ettin_collects", False):
            def collecting(*args: Any, **kwargs: Any) -> Any:
                sink = getattr(_REPORTS, "sink", None)
                info = kwargs.get("loading_info")
                if sink is None or info is None or info.error_msgs or getattr(info, "conversion_errors", None):
                    return original(*args, **kwargs)  # not ours, or transformers raises: let it
                sink.append(info)
                return None

            collecting._ettin_collects = True  # type: ignore[attr-defined]
            modeling_utils.log_state_dict_report = collecting
    _REPORTS.sink = reports = []
    try:
        yield reports
    finally:
        _REPORTS.sink = None


def _check_weight_reports(folder: Path, reports: list[Any]) -> None:
    missing = sorted({key for info in reports for key in info.missing_keys}
                     | {key for info in reports for key, *_ in info.mismatched_keys})
    unexpected = sorted(key for info in reports for key in info.unexpected_keys
                        if not _HARMLESS_UNEXPECTED.search(key))
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weight(s) the model needs are not in the checkpoint and would be random "
                     f"({_some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) in the checkpoint fit no weight of the model ({_some(unexpected)})")
    hint = ""
    if not (folder / "modules.json").exists():
        hint = ("; the folder has no modules.json, so it was read as a bare transformers model: copy the "
                "Sentence Transformers files (modules.json and the module folders) too")
    else:
        hint = "; does config.json (model_type, sizes) belong to these weights?"
    msg = f"{folder} is incomplete or inconsistent: {'; '.join(parts)}{hint}"
    raise ModelLoadError(msg)


def _some(keys: list[str], count: int = 6) -> str:
    return ", ".join(keys[:count]) + (f", ... ({len(keys) - count} more)" if len(keys) > count else "")

"""Writing what a command produces without losing or mixing anything: never over (or around, or inside) its own
inputs, never over what it did not write, and always beside the target first, renamed into place when complete.

Used by ``batch``, ``eval``, ``train`` and ``calibrate``. Every check runs before the work starts and raises
``ValueError`` naming the argument and the path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


def check_apart(output: str | Path, inputs: Mapping[str, str | Path | None], *, argument: str = "--output") -> None:
    """Refuse an ``output`` that is, contains or lies inside one of ``inputs`` (a name -> path mapping; ``None``
    and paths that do not exist are skipped): replacing it would destroy or mix what the command reads."""
    out = Path(output).resolve()
    for name, path in inputs.items():
        if path is None or not Path(path).exists():
            continue
        place = Path(path).resolve()
        if out == place:
            msg = f"{argument} {output} is the {name} ({path}); it is never overwritten: choose another {argument}"
        elif out in place.parents:
            msg = f"{argument} {output} contains the {name} ({path}); choose a folder of its own for {argument}"
        elif place in out.parents:
            msg = f"{argument} {output} lies inside the {name} ({path}); choose a place outside it for {argument}"
        else:
            continue
        raise ValueError(msg)


def check_replaceable_folder(output: str | Path, *, command: str, marker: str, overwrite: bool,
                             is_ours: Callable[[Path], bool] | None = None, argument: str = "--output") -> None:
    """An output folder may be new, empty, or, with ``overwrite``, a folder that ``command`` wrote before (it holds
    ``marker``; ``is_ours`` refines the test): anything else is refused."""
    output = Path(output)
    if not output.exists():
        return
    if not output.is_dir():
        msg = f"{argument} {output} is a file; give a folder"
        raise ValueError(msg)
    if not any(output.iterdir()):
        return
    if not overwrite:
        msg = f"{argument} {output} exists and is not empty (pass --overwrite to replace a folder that {command} wrote)"
        raise ValueError(msg)
    ours = (output / marker).is_file() and (is_ours is None or is_ours(output))
    if not ours:
        msg = (f"{argument} {output} was not written by ettin-rerank {command} (no {marker} in it), so --overwrite "
               f"does not replace it: move it away yourself or choose another {argument}")
        raise ValueError(msg)


def check_writable(folder: str | Path, *, argument: str) -> None:
    """Create and remove a file in ``folder`` (or in its nearest existing parent): a read-only place is found before
    the work, not after it."""
    place = Path(folder)
    while not place.exists():
        place = place.parent
    try:
        with tempfile.NamedTemporaryFile(dir=place, prefix=".ettin-write-probe-"):
            pass
    except OSError as error:
        msg = f"{argument}: cannot write in {place} ({error.strerror or error}); choose a writable place"
        raise ValueError(msg) from None


def check_output_folder(output: str | Path, inputs: Mapping[str, str | Path | None], *, command: str, marker: str,
                        overwrite: bool, is_ours: Callable[[Path], bool] | None = None,
                        argument: str = "--output") -> None:
    """Every refusal of an output folder, before the work: :func:`check_apart` from ``inputs``,
    :func:`check_replaceable_folder` (``command``, ``marker``, ``overwrite``, ``is_ours``), and a writable parent."""
    check_apart(output, inputs, argument=argument)
    check_replaceable_folder(output, command=command, marker=marker, overwrite=overwrite, is_ours=is_ours,
                             argument=argument)
    check_writable(Path(output).parent, argument=argument)


@contextmanager
def staged(output: str | Path) -> Iterator[Path]:
    """A new :func:`staging_folder` beside ``output`` to write the result into: moved into ``output``'s place
    (:func:`replace_folder`) when the block ends, removed when it (or the move) fails."""
    staging = staging_folder(output)
    try:
        yield staging
        replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def staging_folder(target: str | Path) -> Path:
    """A new empty folder beside ``target`` (same file system, so the final rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.incomplete-", dir=target.parent))


def replace_folder(staging: str | Path, target: str | Path) -> None:
    """Move the complete ``staging`` folder to ``target``; a ``target`` already there (checked by the caller as the
    command's own, or empty) is moved aside first and removed only once the new one is in place."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.rename(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
    old = aside / target.name
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(old, target)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``: a reader
    sees the old file or the new one, never half of one."""
    return _write_atomic(path, text, "w", "utf-8")


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """:func:`write_text_atomic` for bytes (an image, say)."""
    return _write_atomic(path, data, "wb", None)


def _write_atomic(path: str | Path, content: str | bytes, mode: str, encoding: str | None) -> Path:
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode, encoding=encoding) as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_json_object(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` if it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None

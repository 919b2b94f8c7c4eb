"""Atomic publishing: everything Panda writes appears whole under its final name, or not at all.

One promise for caches, checkpoints, weight shards, exports and generation outputs: the content is written under a
hidden sibling name (``.<name>.partial-<id>``, same folder, so the final ``rename`` stays on one filesystem), flushed
to disk, then renamed into place. A crash, ``kill -9`` or Ctrl-C leaves at most a ``.partial-*`` sibling, which
:func:`remove_partials` (called by the next run writing the same name) deletes. Temporary folders are created with
``os.mkdir`` so they get the usual umask mode (``tempfile.mkdtemp`` would make every published folder 0700), and a published folder's files get the plain
modes too (:func:`normalize_modes`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = ".partial-"
RETIRED = ".retired"


def sibling(final: Path, tag: str = PARTIAL) -> Path:
    """A hidden, unique name next to ``final``: ``.<name><tag><random>``."""
    return final.with_name(f".{final.name}{tag}{uuid.uuid4().hex[:12]}")


def remove(path: Path) -> None:
    """Delete a file or a folder tree (missing is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def retired(final: Path) -> Path:
    """Where :func:`publish` keeps the previous version of ``final`` during the swap: ``.<name>.retired``."""
    return final.with_name(f".{final.name}{RETIRED}")


def recover_retired(final: Path) -> Path | None:
    """After a crash in the middle of :func:`publish`: a ``.retired`` version whose ``final`` is missing is the
    last complete one and is put back; one whose ``final`` exists is deleted (returned)."""
    old = retired(Path(final))
    if not (old.exists() or old.is_symlink()):
        return None
    if not Path(final).exists():
        os.replace(old, final)
        return None
    remove(old)
    return old


def remove_partials(final: Path) -> list[Path]:
    """Clean up what an interrupted publish of ``final`` left behind (``.<name>.partial-*`` deleted, a retired
    complete version restored, see :func:`recover_retired`); return the deleted paths."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    leftovers = sorted(final.parent.glob(f".{final.name}{PARTIAL}*"))
    for leftover in leftovers:
        remove(leftover)
    old = recover_retired(final)
    return leftovers + ([old] if old is not None else [])


def fsync_tree(path: Path) -> None:
    """Flush a file, or every file under a folder, to disk."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normalize_modes(path: Path) -> None:
    """Give a folder tree the modes a plain ``mkdir``/``open`` would (0777/0666 less the umask): some writers use
    private temporary files (transformers writes ``model.safetensors`` as 0600), which a shared model folder must
    not inherit."""
    mask = current_umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_symlink():
            continue
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def publish(partial: Path, final: Path, *, durable: bool = True) -> None:
    """Rename a complete ``partial`` (file or folder) to ``final``, replacing what is there.

    A file replaces a file atomically. A folder cannot replace a non-empty folder, so an existing ``final`` folder
    is first renamed aside and deleted only once the new one is in place: at every instant one complete version
    exists under ``final`` or under its hidden ``.retired`` name (which :func:`recover_retired` puts back).
    """
    partial, final = Path(partial), Path(final)
    if durable:
        fsync_tree(partial)
    old = None
    if final.is_dir() and not final.is_symlink():
        old = retired(final)
        remove(old)
        os.replace(final, old)
    os.replace(partial, final)
    if durable:
        fsync_dir(final.parent)
    if old is not None:
        remove(old)


@contextmanager
def atomic_path(final: str | Path, *, directory: bool = False, overwrite: bool = False,
                durable: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to write into; it becomes ``final`` only if the block succeeds.

    Args:
        final: The path to publish.
        directory: Create the temporary path as an (empty) folder; otherwise it is a file name the block creates.
        overwrite: Replace an existing ``final`` (only once the new one is complete); otherwise refuse it.
        durable: ``fsync`` the content and the parent folder before and after the rename.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; choose another output or pass overwrite=True (--overwrite)")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_partials(final)
    temporary = sibling(final)
    if directory:
        os.mkdir(temporary)
    try:
        yield temporary
        if directory:
            normalize_modes(temporary)
        publish(temporary, final, durable=durable)
    except BaseException:
        remove(temporary)
        raise


def atomic_directory(output: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """:func:`atomic_path` for a folder."""
    return atomic_path(output, directory=True, overwrite=overwrite)

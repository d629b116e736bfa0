"""Crash-safe files: atomic writes, all-or-nothing checkpoints, one writer per folder, safe loads.

amc's run files go through this module (TensorBoard's event files aside), so a kill
(``kill -9``, a closed laptop) at any moment leaves either the old or the new version of a
file, never a half-written one:

- :func:`atomic_path` / :func:`write_atomic` write to a hidden temporary file beside the
  target (``.name.<pid>.tmp.ext``), flush it to disk and rename it over the target.
- :func:`commit` replaces several files as one: their staged versions
  (:func:`temp_path`) are written first, then a journal names them, then they are renamed.
  :func:`recover` finishes a commit that a kill interrupted (the journal exists) or throws
  the staged files away (it does not), and removes any other half-written temporary file.
- :class:`RunLock` makes one process the only writer of a folder (``fcntl.flock`` on
  ``<folder>/.lock``, which holds the writer's PID); the lock dies with its process.
- :func:`load_weights` reads a ``torch.save`` file with ``weights_only=True`` and turns
  torch's errors into one line that says what is wrong with the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; RunLock only records the PID there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

JOURNAL = ".commit.json"
"""The journal of :func:`commit`: the names of the staged files it is renaming."""
LOCK = ".lock"
"""The lock file of :class:`RunLock`."""
_TEMP = re.compile(r"^\..+\.tmp(\.[^.]+)?$")


class FolderLockedError(RuntimeError):
    """Another process holds the folder's :class:`RunLock`."""


class WeightsError(ValueError):
    """A file that is not a readable ``torch.save`` file of tensors."""


def temp_path(path: str | Path) -> Path:
    """The staged name of ``path`` (see :func:`commit`): ``dir/x.ext`` -> ``dir/.x.tmp.ext``.

    The suffix stays last, so ``np.savez`` and ``savefig`` keep their formats; the leading dot
    marks it as amc's, which lets :func:`recover` find leftovers.
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def is_temp(path: str | Path) -> bool:
    """Whether ``path`` is named like a :func:`temp_path`."""
    return bool(_TEMP.match(Path(path).name))


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort: not every platform can open folders)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish(tmp: Path, path: Path) -> None:
    """Flush the just-written temporary file ``tmp`` to disk and rename it over ``path``."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _rename(src: Path, dst: Path) -> None:
    """Rename the complete staged file ``src`` over ``dst`` (a step of :func:`commit`)."""
    os.replace(src, dst)
    _fsync_dir(dst.parent)


def _append(path: Path, text: str) -> None:
    with path.open("a", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; it replaces ``path`` on success.

    >>> with atomic_path("runs/x/model.pt") as tmp:
    ...     torch.save(state, tmp)

    If the block raises an error, the temporary file is removed and ``path`` is untouched; a
    kill leaves ``path`` untouched and a temporary file that :func:`recover` removes. The
    temporary name holds the process id, so processes sharing a cache never write one file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    _finish(tmp, path)


def _write(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        _write(tmp, data.encode() if isinstance(data, str) else data)
    return path


def write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    """Write ``data`` as indented JSON to ``path``, atomically."""
    return write_atomic(path, json.dumps(data, indent=indent))


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` and flush it to disk (a kill may leave a partial last line)."""
    _append(Path(path), text)


def commit(folder: str | Path, names: list[str]) -> None:
    """Rename the staged files ``temp_path(folder / name)`` over ``folder / name``, all or nothing.

    Write every staged file completely first. The journal is the commit point: once it is on
    disk, :func:`recover` completes the renames after a kill; before, it discards them. Put the
    file that vouches for the others (a state file) last.
    """
    folder = Path(folder)
    for name in names:
        _fsync(temp_path(folder / name))
    write_atomic(folder / JOURNAL, json.dumps(names))
    _complete(folder, names)


def _complete(folder: Path, names: list[str]) -> None:
    for name in names:
        staged = temp_path(folder / name)
        if staged.exists():  # absent: renamed before a kill interrupted the commit
            _rename(staged, folder / name)
    (folder / JOURNAL).unlink()
    _fsync_dir(folder)


def recover(folder: str | Path) -> list[str]:
    """Repair ``folder`` after a kill: finish or discard an interrupted :func:`commit`, drop temp files.

    Call it only while holding the folder's :class:`RunLock` (no writer is active then).

    Returns:
        One sentence per repair, for the log.
    """
    folder = Path(folder)
    notes = []
    journal = folder / JOURNAL
    if journal.is_file():
        names = json.loads(journal.read_text())
        _complete(folder, names)
        notes.append(f"completed an interrupted save of {', '.join(names)} in {folder}")
    leftovers = sorted(p for p in folder.iterdir() if p.is_file() and is_temp(p)) if folder.is_dir() else []
    for path in leftovers:
        path.unlink()
    if leftovers:
        names = ", ".join(p.name for p in leftovers)
        notes.append(f"removed half-written files an interrupted write left in {folder}: {names}")
    return notes


class RunLock:
    """Exclusive, advisory lock making this process the only writer of ``folder``.

    The lock is ``fcntl.flock`` on ``folder/.lock``; the file holds the owner's PID, so a
    second writer is refused with a message naming it. The operating system drops the lock
    when its process ends, however it ends, so a killed run never leaves a stale lock.

    >>> with RunLock(run_dir):
    ...     ...  # write the run's files

    Args:
        folder: The folder to lock (created if missing).

    Raises:
        FolderLockedError: Another process holds the lock.
        OSError: The folder cannot be created or written.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OSError(f"cannot write in {self.folder}: {exc.strerror or exc}") from exc
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FolderLockedError(
                    f"{self.folder} is in use by another amc process (PID {holder}); wait for it to "
                    "finish or stop it, or use another folder"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


@contextlib.contextmanager
def claim_folder(folder: str | Path, unused: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Lock ``folder`` for this process, repair what a kill left in it (:func:`recover`), yield it.

    A folder this call created is removed again if the block fails with an error (not an
    interrupt, which leaves it to be resumed) while ``unused(folder)`` holds (by default:
    nothing but the lock file is in it), so a refused command leaves no half-made folder.

    Raises:
        FolderLockedError: Another process writes to ``folder``.
        OSError: ``folder`` cannot be created or written.
    """
    folder = Path(folder)
    created = not folder.exists()
    with RunLock(folder):
        for note in recover(folder):
            log.warning(note)
        try:
            yield folder
        except Exception:
            if created and (unused or _only_lock)(folder):
                shutil.rmtree(folder, ignore_errors=True)
            raise


def _only_lock(folder: Path) -> bool:
    return all(p.name == LOCK for p in folder.iterdir())


def load_weights(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that say what is wrong.

    Only tensors, numbers, strings and containers of them load; a pickled object of any other
    kind (which could run code) is refused, never executed.

    Args:
        path: A file written by ``torch.save``.
        what: What the file should be, for messages (``checkpoint``, ``agent file``).

    Raises:
        WeightsError: The file is missing, not a ``torch.save`` file, damaged, or holds more
            than tensors.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist")
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        raise WeightsError(f"{what} {path} is empty")
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # a zip, or torch's legacy pickle
        raise WeightsError(f"{what} {path} is not a PyTorch file (torch.save format)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing them
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported operand" in str(exc):
            raise WeightsError(f"{what} {path} is not a readable torch.save file") from None
        raise WeightsError(
            f"{what} {path} holds pickled objects other than tensors; refused unread, since loading "
            "them could run code"
        ) from None
    except Exception as exc:  # torch raises many types for damaged files
        log.debug("torch.load(%s): %s", path, exc)
        raise WeightsError(f"{what} {path} is damaged or truncated ({type(exc).__name__})") from None

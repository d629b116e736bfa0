"""Search run folders: their names, and what a resume checks and repairs after a kill.

The writes themselves are crash-safe (:mod:`amc.files`); this module holds what is specific
to a search's folder: a run name is one plain folder name inside ``--runs-dir``, ``state.json``
is the checkpoint a resume continues from, and ``episodes.csv`` is brought back in step with
it (rows a kill left beyond the checkpoint are dropped, since those episodes run again).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path

from amc.files import write_atomic

log = logging.getLogger(__name__)


class RunFolderError(ValueError):
    """A run folder whose files cannot be continued consistently."""


def check_run_name(name: str) -> None:
    """Refuse a run name that is not one plain folder name (it would write outside ``--runs-dir``).

    Raises:
        ValueError: ``name`` holds a path separator, is ``.`` or ``..``, or is absolute.
    """
    if not name:
        return
    if Path(name).is_absolute() or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(
            f"run name '{name}' must be a plain folder name (no '/', '..' or absolute path): the run "
            "folder goes inside --runs-dir"
        )


def read_state(run_dir: Path) -> dict | None:
    """The checkpoint ``run_dir/state.json``, or ``None`` when the run was killed before its first.

    Raises:
        RunFolderError: ``state.json`` is not a checkpoint.
    """
    path = run_dir / "state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        int(state["episodes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RunFolderError(f"{path} is not a search checkpoint ({type(exc).__name__}: {exc})") from None
    return state


def repair_episodes(path: Path, episodes: int) -> None:
    """Make ``episodes.csv`` hold exactly the checkpoint's ``episodes`` rows, in order, once each.

    Rows beyond the checkpoint (recorded before a kill, not yet checkpointed; possibly a
    partial last line) are dropped, atomically, since those episodes run again.

    Raises:
        RunFolderError: The file holds fewer episodes than the checkpoint, or others (it was
            changed or lost outside amc); the run cannot continue consistently.
    """
    if not episodes:  # nothing checkpointed: start the file afresh (a kill may have cut its header)
        if path.is_file() and path.stat().st_size:
            log.warning("dropping %s: no episode in it was checkpointed; they run again", path)
        path.unlink(missing_ok=True)
        return
    rows = []
    if path.is_file():
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    if not rows:
        raise RunFolderError(
            f"{path} is missing or empty, but the checkpoint (state.json) holds {episodes} episodes; "
            "restore the file or start a new run"
        )
    body = rows[1:]
    numbers = [row[0] if row else "" for row in body[:episodes]]
    if not rows[0] or rows[0][0] != "episode" or numbers != [str(k) for k in range(1, episodes + 1)]:
        raise RunFolderError(
            f"{path} is out of step with the checkpoint (state.json: episodes 1 to {episodes}; the file: "
            f"{len(body)} rows, starting {', '.join(numbers[:3]) or 'with none'}); restore the file or "
            "start a new run"
        )
    if len(body) > episodes:
        log.warning(
            "dropping %d row(s) of %s recorded after the last checkpoint: those episodes run again",
            len(body) - episodes,
            path,
        )
        text = io.StringIO()
        csv.writer(text).writerows(rows[: episodes + 1])
        write_atomic(path, text.getvalue())


def log_command(run_dir: Path, argv: list[str] | None = None) -> None:
    """Append the command line (``sys.argv`` by default) to ``run_dir/command.txt``, atomically."""
    path = run_dir / "command.txt"
    before = path.read_text() if path.is_file() else ""
    write_atomic(path, before + " ".join(sys.argv if argv is None else argv) + "\n")

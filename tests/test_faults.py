"""Fault injection: kill a search and a fine-tune at each write point, resume, compare the records.

Every file amc writes goes through :mod:`amc.files`, whose three primitives are wrapped here:
``_finish`` puts a just-written temporary file in place, ``_rename`` moves a complete staged
file in place (a step of a checkpoint's commit), ``_append`` appends to ``episodes.csv``. A
*kill* at a write point raises :class:`Killed`, a ``BaseException`` that no error handler of
amc catches, so, as after ``kill -9``, nothing is cleaned up: a kill *during* a write leaves
its temporary file (or the appended line) half-written, or the staged file not yet moved; a
kill *after* it leaves the write done and the next one not begun. The run is then resumed as
a user would resume it, and its records must equal an uninterrupted run's: every episode (or
epoch) once, in order, the checkpointed ones unchanged.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from amc.agents.agent_file import load_agent
from amc.agents.search import SearchConfig, resume_search, run_search
from amc.envs.config import EnvConfig
from PIL import Image

import amc.files
from amc.baselines import uniform_policy
from amc.cli import main
from amc.data import load_dataset
from amc.files import JOURNAL, is_temp
from amc.models import create_model
from amc.policy import Policy, load_pruned
from amc.pruning.channel import ChannelPruner

EPISODES, WARMUP, UNITS = 4, 2, 12  # 2 random episodes, then 2 that train the agent
SIGMA, DECAY = 0.5, 0.99  # the DDPG preset's noise


class Killed(BaseException):  # not an Exception: no error handler of amc may catch it
    """A simulated ``kill -9`` at a write point."""


@dataclass
class Faults:
    """Wraps amc's write primitives: records every write, and kills at one of them.

    Attributes:
        kill_at: ``(index, phase)``: kill at the index-th write, ``during`` or ``after`` it.
        events: ``(kind, file name)`` of every write seen, in order.
    """

    kill_at: tuple[int, str] | None = None
    events: list[tuple[str, str]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Faults:
        finish, rename, append = amc.files._finish, amc.files._rename, amc.files._append

        def faulty_finish(tmp: Path, path: Path) -> None:
            if self._hit("write", path.name, "during"):
                tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])  # half-written
                raise Killed
            finish(tmp, path)
            self._after()

        def faulty_rename(src: Path, dst: Path) -> None:
            if self._hit("rename", dst.name, "during"):
                raise Killed  # the staged file is complete; it is not in place yet
            rename(src, dst)
            self._after()

        def faulty_append(path: Path, text: str) -> None:
            if self._hit("append", path.name, "during"):
                append(path, text[: len(text) // 2])
                raise Killed
            append(path, text)
            self._after()

        monkeypatch.setattr(amc.files, "_finish", faulty_finish)
        monkeypatch.setattr(amc.files, "_rename", faulty_rename)
        monkeypatch.setattr(amc.files, "_append", faulty_append)
        return self

    def _hit(self, kind: str, name: str, phase: str) -> bool:
        self.events.append((kind, name))
        return self.kill_at == (len(self.events) - 1, phase)

    def _after(self) -> None:
        if self.kill_at == (len(self.events) - 1, "after"):
            raise Killed


def kill_points(events: list[tuple[str, str]], every: bool) -> list[tuple[int, str]]:
    """Where to kill: the first and last write of each file, during and after (``every``: all)."""
    firsts: dict[tuple[str, str], int] = {}
    lasts: dict[tuple[str, str], int] = {}
    for i, event in enumerate(events):
        firsts.setdefault(event, i)
        lasts[event] = i
    indices = range(len(events)) if every else sorted(set(firsts.values()) | set(lasts.values()))
    return [(i, phase) for i in indices for phase in ("during", "after")]


def run_with_faults(
    monkeypatch: pytest.MonkeyPatch, kill_at: tuple[int, str] | None, job: Callable
) -> Faults:
    """Run ``job()`` under :class:`Faults`; a kill ends it (the monkeypatches are then undone)."""
    torch.manual_seed(0)  # the untrained model's weights: the same in every run
    with monkeypatch.context() as mp:
        faults = Faults(kill_at).install(mp)
        try:
            job()
        except Killed:
            pass
        else:
            assert kill_at is None, f"no write at {kill_at}"
    return faults


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if is_temp(p) or p.name == JOURNAL)


# --- the search ----------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("shared_sample_cache")  # one decoded sample per module


def search_config(runs: Path) -> SearchConfig:
    env = EnvConfig(model="resnet20", checkpoint="none", width=0.25, search_images=32, selection_images=64)
    hp = {"warmup_episodes": WARMUP, "batch_size": 8}
    return SearchConfig(env=env, episodes=EPISODES, hp=hp, runs_dir=str(runs), name="run", finalists=3)


def rows(run: Path) -> list[list[str]]:
    with (run / "episodes.csv").open(newline="") as f:
        return list(csv.reader(f))[1:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_cache) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """An uninterrupted search: its episode rows and the writes it made, in order."""
    runs = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMC_CACHE_DIR", str(sample_cache))
        load_dataset("sample")  # decoded and cached first: the cache's writes are not the run's
        faults = run_with_faults(mp, None, lambda: run_search(search_config(runs), progress=False))
    return rows(runs / "run"), faults.events


def resume_like_a_user(runs: Path) -> None:
    """``amc search --resume``, or the same search again if the kill came before its config.yaml."""
    run = runs / "run"
    torch.manual_seed(0)  # the same untrained model as before the kill
    if (run / "config.yaml").is_file():
        resume_search(run, progress=False)
    else:
        run_search(search_config(runs), progress=False)


def check_search(run: Path, reference_rows: list[list[str]], checkpointed: int) -> None:
    """The resumed run holds every episode once, the checkpointed ones as the reference has them."""
    got = rows(run)
    assert [int(r[0]) for r in got] == list(range(1, EPISODES + 1))
    assert got[:checkpointed] == reference_rows[:checkpointed]
    state = json.loads((run / "state.json").read_text())
    assert state["episodes"] == EPISODES and state["num_timesteps"] == EPISODES * UNITS
    assert state["noise"]["sigma"] == pytest.approx(SIGMA * DECAY ** (EPISODES - WARMUP))
    with np.load(run / "buffer.npz") as z:  # each episode's transitions in the replay buffer once
        assert tuple(z["meta"][:3]) == (EPISODES * UNITS, 0, EPISODES)
        assert z["dones"][: EPISODES * UNITS, 0].sum() == EPISODES
    best = next(r for r in got if r[0] == str(state["best"]["episode"]))
    assert float(best[1]) == pytest.approx(state["best"]["reward"], abs=1e-6)
    assert Policy.load(run / "best_policy.json").metrics["source"]
    assert json.loads((run / "finalists.json").read_text())
    spec, _ = load_agent(run / "agent.pt")
    assert spec.algorithm == "ddpg"
    assert leftovers(run) == []


def checkpointed_episodes(run: Path) -> int:
    state = run / "state.json"
    return json.loads(state.read_text())["episodes"] if state.is_file() else 0


def kill_and_resume(tmp_path, monkeypatch, reference, kill_at) -> None:
    runs = tmp_path / f"kill-{kill_at[0]}-{kill_at[1]}"
    run_with_faults(monkeypatch, kill_at, lambda: run_search(search_config(runs), progress=False))
    checkpointed = checkpointed_episodes(runs / "run")
    resume_like_a_user(runs)
    check_search(runs / "run", reference[0], checkpointed)


def test_the_search_writes_through_the_crash_safe_primitives(reference):
    events = set(reference[1])
    expected = {("write", name) for name in ("config.yaml", "command.txt", "finalists.json", JOURNAL)}
    expected |= {("write", f".{name}.tmp.{ext}") for name, ext in (("agent", "pt"), ("buffer", "npz"))}
    expected |= {("rename", name) for name in ("agent.pt", "agent.json", "buffer.npz", "best_policy.json")}
    expected |= {("append", "episodes.csv"), ("write", ".state.tmp.json")}
    assert expected <= events, expected - events
    assert reference[1].count(("rename", "state.json")) == EPISODES  # one checkpoint per episode


@pytest.mark.parametrize(
    "where",
    [
        ("append", "episodes.csv", 2, "during"),  # a partial row
        ("rename", "agent.pt", 1, "after"),  # inside a checkpoint's commit: journal written
        pytest.param(("write", ".state.tmp.json", 0, "during"), marks=pytest.mark.slow),  # before the journal
        pytest.param(("write", "finalists.json", 0, "during"), marks=pytest.mark.slow),  # the final selection
    ],
    ids=["csv-row", "mid-commit", "staging", "final"],
)
def test_a_kill_at_a_write_point_resumes_to_the_same_records(tmp_path, monkeypatch, reference, where):
    kind, name, occurrence, phase = where
    indices = [i for i, event in enumerate(reference[1]) if event == (kind, name)]
    kill_and_resume(tmp_path, monkeypatch, reference, (indices[occurrence], phase))


@pytest.mark.slow
def test_a_kill_at_every_write_point_resumes_to_the_same_records(tmp_path, monkeypatch, reference):
    for kill_at in kill_points(reference[1], every=False):
        kill_and_resume(tmp_path, monkeypatch, reference, kill_at)


@pytest.mark.slow
def test_a_kill_during_the_resume_itself_is_repaired_too(tmp_path, monkeypatch, reference):
    """Kill a run mid-checkpoint, then kill its resume at each of the resume's first writes."""
    indices = [i for i, event in enumerate(reference[1]) if event == ("rename", "agent.pt")]
    setup = (indices[1], "after")  # the journal of the second checkpoint is on disk
    base = tmp_path / "base"
    run_with_faults(monkeypatch, setup, lambda: run_search(search_config(base), progress=False))
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    writes = run_with_faults(monkeypatch, None, lambda: resume_search(probe / "run", progress=False)).events
    for i in range(min(len(writes), 8)):  # the repair, the command line, the first episode
        for phase in ("during", "after"):
            runs = tmp_path / f"resume-{i}-{phase}"
            shutil.copytree(base, runs)
            run_with_faults(monkeypatch, (i, phase), lambda r=runs: resume_search(r / "run", progress=False))
            resume_search(runs / "run", progress=False)
            check_search(runs / "run", reference[0], 1)


# --- the fine-tune -------------------------------------------------------------------------------

EPOCHS = 2


@pytest.fixture(scope="module")
def finetune_setup(tmp_path_factory) -> dict:
    """A tiny image folder, a checkpoint and a policy for ``amc apply --finetune-epochs``."""
    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 4)):
        for c in range(3):
            (root / "images" / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(40 + 70 * c + rng.integers(-15, 16, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "images" / split / f"c{c}" / f"{i}.png")
    model = create_model("resnet20", num_classes=3, width=0.25)
    torch.save(model.state_dict(), root / "dense.pt")
    policy = uniform_policy(ChannelPruner(model), 0.5, model="resnet20").save(root / "policy.json")
    argv = ["apply", "--policy", str(policy), "--checkpoint", str(root / "dense.pt"), "--width", "0.25"]
    argv += ["--dataset", "folder", "--data", str(root / "images"), "--search-size", "6", "--threads", "1"]
    argv += ["--finetune-epochs", str(EPOCHS)]
    return {"root": root, "argv": argv}


def apply_like_a_user(argv: list[str], out: Path) -> None:
    """``amc apply`` again, with ``--resume`` when a fine-tune was interrupted; nothing if it finished."""
    if (out / "pruned.pt").is_file():
        return
    resume = ["--resume"] if (out / "finetune" / "last.pt").is_file() else []
    assert main([*argv, "--out", str(out), *resume]) == 0


def check_finetune(out: Path) -> None:
    history = json.loads((out / "finetune" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert json.loads((out / "finetune" / "model.json").read_text())["train"]["epochs"] == EPOCHS
    assert json.loads((out / "metrics.json").read_text())["finetune_epochs"] == EPOCHS
    pruned = load_pruned(create_model("resnet20", num_classes=3, width=0.25), out / "pruned.pt")
    assert sum(p.numel() for p in pruned.parameters()) > 0
    assert leftovers(out) == []


@pytest.fixture(scope="module")
def finetune_reference(finetune_setup, sample_cache) -> list[tuple[str, str]]:
    """The writes of an uninterrupted ``amc apply --finetune-epochs`` (after the data is cached)."""
    root, argv = finetune_setup["root"], finetune_setup["argv"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMC_CACHE_DIR", str(sample_cache))
        assert main([*argv, "--out", str(root / "warm-up")]) == 0  # decodes and caches the images
        faults = run_with_faults(mp, None, lambda: main([*argv, "--out", str(root / "reference")]))
    check_finetune(root / "reference")
    return faults.events


def kill_finetune_and_resume(tmp_path, monkeypatch, finetune_setup, kill_at) -> None:
    argv = finetune_setup["argv"]
    out = tmp_path / f"apply-{kill_at[0]}-{kill_at[1]}"
    run_with_faults(monkeypatch, kill_at, lambda: main([*argv, "--out", str(out)]))
    apply_like_a_user(argv, out)
    check_finetune(out)


def test_the_fine_tune_writes_through_the_crash_safe_primitives(finetune_reference):
    files = [name for _, name in finetune_reference]
    assert files.count("last.pt") == EPOCHS and files.count("history.json") == EPOCHS
    for name in ("model.json", "model.pt", "metrics.json", "pruned.policy.json", "pruned.pt"):
        assert name in files, name
    assert files[-1] == "pruned.pt"  # last: its presence means the apply finished


def test_a_kill_while_saving_an_epoch_resumes(tmp_path, monkeypatch, finetune_setup, finetune_reference):
    last = [i for i, event in enumerate(finetune_reference) if event == ("write", "last.pt")]
    kill_finetune_and_resume(tmp_path, monkeypatch, finetune_setup, (last[-1], "during"))


@pytest.mark.slow
def test_a_kill_at_every_fine_tune_write_resumes(tmp_path, monkeypatch, finetune_setup, finetune_reference):
    for kill_at in kill_points(finetune_reference, every=True):
        kill_finetune_and_resume(tmp_path, monkeypatch, finetune_setup, kill_at)

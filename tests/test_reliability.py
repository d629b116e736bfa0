"""Trustworthy runs: crash-safe files, one writer per folder, agent files as data, one-line errors."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from amc.agents.agent_file import AgentFileError, AgentSpec, build_agent, load_agent, read_agent, save_agent
from amc.agents.factory import load_preset, make_agent
from amc.agents.runs import RunFolderError
from amc.agents.search import SearchConfig, resume_search, run_search, warm_start
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv

import amc.policy
import amc.train
from amc.baselines import uniform_policy
from amc.cli import main
from amc.files import (
    JOURNAL,
    FolderLockedError,
    RunLock,
    WeightsError,
    atomic_path,
    claim_folder,
    commit,
    is_temp,
    load_weights,
    recover,
    temp_path,
    write_atomic,
)
from amc.models import create_model
from amc.policy import Policy, PolicyError, apply_policy, measure_cost
from amc.pruning.channel import ChannelPruner

TINY = ["--model", "resnet20", "--checkpoint", "none", "--width", "0.25", "--threads", "1"]
"""An untrained width-0.25 ResNet-20 on the bundled sample: the cheapest model the CLI builds."""


pytestmark = pytest.mark.usefixtures("shared_sample_cache")  # one decoded sample per module


def tiny_search(runs_dir: Path, name: str, episodes: int = 3, **overrides) -> SearchConfig:
    env = EnvConfig(model="resnet20", checkpoint="none", width=0.25, search_images=32, selection_images=64)
    hp = {"warmup_episodes": 2, "batch_size": 8}
    return SearchConfig(env=env, episodes=episodes, hp=hp, runs_dir=str(runs_dir), name=name, **overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, sample_cache) -> Path:
    """A finished 3-episode DDPG search (copy it before changing it)."""
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMC_CACHE_DIR", str(sample_cache))
        run_search(tiny_search(runs, "run"), progress=False)
    return runs / "run"


def copy_run(run: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(run, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of ``amc argv`` (argparse's errors exit through SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


class Payload:
    """A pickle that creates ``marker`` when it is unpickled: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


# --- crash-safe files ----------------------------------------------------------------------------


def test_write_atomic_replaces_whole_files_and_keeps_the_old_one_on_errors(tmp_path):
    path = write_atomic(tmp_path / "sub" / "a.json", "old")
    assert path.read_text() == "old"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "old" and os.listdir(path.parent) == ["a.json"]
    write_atomic(path, b"new")
    assert path.read_text() == "new" and os.listdir(path.parent) == ["a.json"]


def test_temp_names_keep_the_suffix_and_are_recognised():
    assert temp_path("runs/x/buffer.npz") == Path("runs/x/.buffer.tmp.npz")
    assert temp_path("pruned.policy.json").name == ".pruned.policy.tmp.json"
    assert is_temp(".state.tmp.json") and is_temp(".arrays.123.tmp.npz") and is_temp(".command.tmp")
    assert not is_temp("state.json") and not is_temp("events.out.tfevents.1.tmp.2.0") and not is_temp(".lock")


def test_commit_replaces_files_together_and_recover_finishes_or_discards(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("1")
        temp_path(tmp_path / name).write_text("2")
    commit(tmp_path, ["a.txt", "b.txt"])
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["2", "2"]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]

    # Killed after the journal and one rename: the next start completes the commit.
    temp_path(tmp_path / "b.txt").write_text("3")
    (tmp_path / "a.txt").write_text("3")
    write_atomic(tmp_path / JOURNAL, json.dumps(["a.txt", "b.txt"]))
    notes = recover(tmp_path)
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["3", "3"]
    assert notes and "completed an interrupted save" in notes[0]

    # Killed before the journal: the staged files are thrown away, the old ones stay.
    temp_path(tmp_path / "a.txt").write_text("half")
    (tmp_path / ".b.999.tmp.txt").write_text("half")
    notes = recover(tmp_path)
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["3", "3"]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]
    assert ".a.tmp.txt" in notes[0] and ".b.999.tmp.txt" in notes[0]
    assert recover(tmp_path) == []


def test_load_weights_never_runs_a_pickle(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": torch.ones(2), "x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="pickled objects other than tensors; refused unread"):
        load_weights(tmp_path / "evil.pt")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(WeightsError, match=r"not a readable torch\.save file"):
        load_weights(tmp_path / "raw.pt")
    assert not marker.exists()


# --- one writer per folder -----------------------------------------------------------------------


def test_run_lock_refuses_a_second_writer_naming_the_holder(tmp_path):
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(FolderLockedError, match=rf"in use by another amc process \(PID {os.getpid()}\)"):
            RunLock(tmp_path / "run").__enter__()
    with RunLock(tmp_path / "run"):  # released on exit
        pass


@contextlib.contextmanager
def lock_holder(folder: Path):
    """Another process that holds ``folder``'s lock until it is killed (with SIGKILL, as a crash)."""
    code = "\n".join(
        [
            "import sys, time",
            "from amc.files import RunLock",
            "with RunLock(sys.argv[1]):",
            "    print('locked', flush=True)",
            "    time.sleep(120)",
        ]
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)


def test_a_second_writer_is_refused_with_the_holders_pid(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    with lock_holder(run) as pid:
        code, err = cli(["search", "--resume", str(run), "--no-progress", "--no-summary"], capsys)
        assert code == 2 and f"{run} is in use by another amc process (PID {pid})" in err
        argv = ["search", *TINY, "--runs-dir", str(tmp_path), "--name", "run", "--no-progress"]
        code, err = cli(argv, capsys)
        assert code == 2 and f"(PID {pid})" in err
        with pytest.raises(FolderLockedError, match=str(pid)):
            amc.train.train(None, None, amc.train.TrainConfig(epochs=1), run)
        code, err = cli(
            ["apply", "--policy", str(run / "best_policy.json"), *TINY, "--out", str(run)], capsys
        )
        assert code == 2 and f"(PID {pid})" in err
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before  # nothing written while the other process held the folder
    # The holder was killed: its lock died with it, and the run resumes.
    assert resume_search(run, progress=False)["episodes"] == 3


# --- agent files are data ------------------------------------------------------------------------


def sb3_zip(run: Path, marker: Path, pickled_weights: bool = False) -> Path:
    """The run's agent in stable-baselines3's zip, with code planted in its pickled ``data`` entry."""
    _, agent = load_agent(run / "agent.pt")
    path = run / "agent.zip"
    agent.save(path)
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    data = json.loads(entries["data"])
    data["policy_class"][":serialized:"] = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    entries["data"] = json.dumps(data).encode()
    if pickled_weights:
        buffer = io.BytesIO()
        torch.save({"weights": Payload(marker)}, buffer)
        entries["policy.pth"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for name, content in entries.items():
            z.writestr(name, content)
    return path


def test_a_pickle_planted_in_an_agent_file_never_runs(finished_run, tmp_path, capsys):
    marker = tmp_path / "ran"
    run = copy_run(finished_run, tmp_path)
    tensors = torch.load(run / "agent.pt", weights_only=True)
    tensors["params"]["policy"]["extra"] = Payload(marker)
    torch.save(tensors, run / "agent.pt")
    out = tmp_path / "applied"
    code, err = cli(["apply", "--agent", str(run / "agent.pt"), *TINY, "--out", str(out)], capsys)
    assert code == 2 and "pickled objects other than tensors; refused unread" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(AgentFileError, match="pickled objects"):
        warm_start(None, run / "agent.pt")
    assert not marker.exists() and not out.exists()


def test_a_stable_baselines3_zip_is_refused_unopened(finished_run, tmp_path, capsys):
    marker = tmp_path / "ran"
    run = copy_run(finished_run, tmp_path)
    path = sb3_zip(run, marker)
    code, err = cli(["apply", "--agent", str(path), *TINY, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "is a stable-baselines3 zip, which can carry pickled code" in err
    argv = ["search", *TINY, "--agent-init", str(path), "--runs-dir", str(tmp_path), "--name", "w"]
    code, err = cli([*argv, "--no-progress", "--no-summary"], capsys)
    assert code == 2 and "stable-baselines3 zip" in err
    assert not marker.exists() and not (tmp_path / "w").exists()


def test_agent_settings_are_checked_before_anything_is_built(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    spec = json.loads((run / "agent.json").read_text())
    for hp, fragment in (
        ({"tensorboard_log": "/tmp/x"}, "no setting 'tensorboard_log'"),
        ({"tau": "x"}, "tau"),
    ):
        (run / "agent.json").write_text(json.dumps({**spec, "hp": {**spec["hp"], **hp}}))
        with pytest.raises(AgentFileError, match=fragment):
            read_agent(run)
    (run / "agent.json").write_text(json.dumps({**spec, "algorithm": "ppo"}))
    with pytest.raises(AgentFileError, match="'ppo' agent"):
        read_agent(run / "agent.pt")
    (run / "agent.json").unlink()
    with pytest.raises(AgentFileError, match=r"agent\.json does not exist"):
        read_agent(run / "agent.pt")


def test_a_run_checkpointed_as_sb3_zip_resumes_reading_only_its_tensors(finished_run, tmp_path):
    marker = tmp_path / "ran"
    run = copy_run(finished_run, tmp_path)
    _, before = load_agent(run / "agent.pt")
    sb3_zip(run, marker)
    for name in ("agent.pt", "agent.json"):
        (run / name).unlink()
    result = resume_search(run, episodes=4, progress=False)
    assert result["episodes"] == 4 and not marker.exists()
    spec, after = load_agent(run)  # the resume wrote the new format
    assert spec.algorithm == "ddpg" and after.policy.state_dict().keys() == before.policy.state_dict().keys()


def test_a_legacy_zip_with_pickled_weights_fails_cleanly(finished_run, tmp_path):
    marker = tmp_path / "ran"
    run = copy_run(finished_run, tmp_path)
    sb3_zip(run, marker, pickled_weights=True)
    (run / "agent.pt").unlink()
    with pytest.raises(AgentFileError, match=r"agent\.zip holds pickled objects other than tensors"):
        resume_search(run, episodes=4, progress=False)
    assert not marker.exists()


def test_sac_agent_round_trips_through_the_agent_file(tmp_path):
    env = PruningEnv(EnvConfig(model="resnet20", checkpoint="none", width=0.25, search_images=32))
    hp = load_preset("sac", overrides={"batch_size": 8})
    agent, _ = make_agent("sac", env, hp, env.n, seed=3)
    with torch.no_grad():
        agent.log_ent_coef.fill_(-1.5)  # a learnt entropy coefficient: a saved variable, not a network
    save_agent(agent, AgentSpec.of("sac", agent, hp, env.n), tmp_path / "agent.pt")
    spec, tensors = read_agent(tmp_path)
    rebuilt = build_agent(spec, tensors)
    for name, tensor in agent.policy.state_dict().items():
        assert torch.equal(rebuilt.policy.state_dict()[name], tensor), name
    assert (
        rebuilt.log_ent_coef.item() == pytest.approx(-1.5)
        and rebuilt.learning_starts == agent.learning_starts
    )
    obs = np.full(env.observation_space.shape, 0.3, dtype=np.float32)
    assert rebuilt.predict(obs, deterministic=True)[0] == pytest.approx(
        agent.predict(obs, deterministic=True)[0]
    )


# --- resume repairs or explains ------------------------------------------------------------------


def test_resume_refuses_a_csv_out_of_step_with_the_checkpoint(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / "episodes.csv").write_text("")  # what a kill during the old non-atomic rewrite left
    with pytest.raises(RunFolderError, match=r"missing or empty, but the checkpoint .* holds 3 episodes"):
        resume_search(run, episodes=4, progress=False)
    lines = (finished_run / "episodes.csv").read_text().splitlines(keepends=True)
    (run / "episodes.csv").write_text("".join([lines[0], lines[1], lines[3]]))  # episode 2 lost
    with pytest.raises(RunFolderError, match="out of step with the checkpoint"):
        resume_search(run, episodes=4, progress=False)


def test_resume_completes_an_interrupted_checkpoint_and_drops_leftovers(finished_run, tmp_path, caplog):
    run = copy_run(finished_run, tmp_path)
    state = json.loads((run / "state.json").read_text())
    (run / ".buffer.4242.tmp.npz").write_bytes(b"half")  # a kill inside a write
    # A kill inside a commit: the journal is written, state.json not yet renamed.
    temp_path(run / "state.json").write_text(json.dumps({**state, "elapsed": 123.0}))
    write_atomic(run / JOURNAL, json.dumps(["state.json"]))
    lines = (finished_run / "episodes.csv").read_text().splitlines(keepends=True)
    (run / "episodes.csv").write_text("".join(lines) + "4,-0.5,50.0")  # a partial row past the checkpoint
    with caplog.at_level("WARNING"):
        result = resume_search(run, episodes=4, progress=False)
    assert result["episodes"] == 4
    text = caplog.text
    assert "completed an interrupted save of state.json" in text and ".buffer.4242.tmp.npz" in text
    assert "dropping 1 row(s)" in text
    assert json.loads((run / "state.json").read_text())["elapsed"] > 123.0
    assert not [p for p in run.iterdir() if is_temp(p) or p.name == JOURNAL]


def test_claim_folder_leaves_no_half_made_folder(tmp_path):
    with pytest.raises(ValueError), claim_folder(tmp_path / "new"):
        raise ValueError("refused")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(ValueError), claim_folder(tmp_path / "old"):
        raise ValueError("refused")
    assert (tmp_path / "old").is_dir()  # a folder that existed stays


# --- policies are checked against the model they are applied to -----------------------------------


def tiny_policy(**changes) -> Policy:
    model = create_model("resnet20", width=0.25)
    policy = uniform_policy(ChannelPruner(model), 0.5, model="resnet20")
    for key, value in changes.items():
        setattr(policy, key, value)
    return policy


def test_apply_policy_refuses_impossible_kept_counts_and_unsigned_policies():
    model = create_model("resnet20", width=0.25)
    policy = tiny_policy()
    first = next(iter(policy.kept))
    with pytest.raises(PolicyError, match=rf"impossible channel counts .*'{first}': '99 of"):
        apply_policy(model, tiny_policy(kept={**policy.kept, first: 99}), (1, 3, 32, 32))
    with pytest.raises(PolicyError, match=r"unit.* this model does not have"):
        apply_policy(model, tiny_policy(kept={**policy.kept, "nope": 1}), (1, 3, 32, 32))
    with pytest.raises(PolicyError, match=rf'records no model signature.*"signature": "{policy.signature}"'):
        apply_policy(model, tiny_policy(signature=""), (1, 3, 32, 32))
    with pytest.raises(PolicyError, match="whole numbers of at least 1"):
        Policy(**{**json.loads(policy.to_json()), "kept": {first: -4}})
    with pytest.raises(PolicyError, match="round_to must be a whole number"):
        Policy(**{**json.loads(policy.to_json()), "round_to": 0})


def test_measure_cost_counts_the_network_not_the_file():
    model = create_model("resnet20", width=0.25)
    pruner = ChannelPruner(model)
    kept = pruner.kept_for([0.5] * len(pruner.units))
    policy = Policy.from_kept(pruner, kept, [0.5] * len(pruner.units))
    pruned = apply_policy(model, policy, (1, 3, 32, 32))
    assert measure_cost(pruned, (1, 3, 32, 32)) == {
        "macs": policy.cost_after["macs"],
        "params": policy.cost_after["params"],
    }
    sparse = apply_policy(model, Policy({"layer1.0.conv1": 0.5}, mode="finegrained"))
    conv = sparse.layer1[0].conv1.weight
    dense, cut = measure_cost(model, (1, 3, 32, 32), True), measure_cost(sparse, (1, 3, 32, 32), True)
    assert dense["params"] - cut["params"] == int((conv == 0).sum()) > 0 and cut["macs"] < dense["macs"]


# --- every bad input: one line, exit 2, nothing left behind ------------------------------------------


@pytest.fixture
def bad_inputs(finished_run, tmp_path) -> dict[str, str]:
    """Placeholders of the table below: files and folders that each case needs."""
    policy = tiny_policy()
    first = next(iter(policy.kept))
    files = {
        "run": str(copy_run(finished_run, tmp_path)),
        "tmp": str(tmp_path),
        "text": str(tmp_path / "notes.pt"),
        "negative": str(tmp_path / "negative.json"),
        "too_many": str(tmp_path / "too_many.json"),
        "unsigned": str(tmp_path / "unsigned.json"),
    }
    Path(files["text"]).write_text("these are my notes\nnot weights\n")
    data = json.loads(policy.to_json())
    Path(files["negative"]).write_text(json.dumps({**data, "kept": {**data["kept"], first: -3}}))
    Path(files["too_many"]).write_text(json.dumps({**data, "kept": {**data["kept"], first: 10_000}}))
    Path(files["unsigned"]).write_text(json.dumps({**data, "signature": ""}))
    return files


SEARCH = ["search", *TINY, "--runs-dir", "{tmp}/runs", "--no-progress", "--no-summary"]
APPLY = ["apply", *TINY, "--out", "{tmp}/applied"]
BAD_INPUTS = [
    (
        "round-to 0",
        [*SEARCH, "--round-to", "0"],
        "argument --round-to: '0' is not a whole number of at least 1",
    ),
    ("apply round-to 0", [*APPLY, "--policy", "{unsigned}", "--round-to", "0"], "--round-to: '0' is not"),
    (
        "episodes 0",
        [*SEARCH, "--episodes", "0"],
        "argument --episodes: '0' is not a whole number of at least 1",
    ),
    ("episodes -3", [*SEARCH, "--episodes", "-3"], "argument --episodes: '-3' is not a whole number"),
    ("envs 0", [*SEARCH, "--envs", "0"], "argument --envs: '0' is not a whole number"),
    (
        "resume with other options",
        ["search", "--resume", "{run}", "--seed", "3", "--no-reconstruct", "--no-progress"],
        "settings in its config.yaml, so --seed, --no-reconstruct would be ignored",
    ),
    ("episodes-override without resume", [*SEARCH, "--episodes-override", "5"], "goes with --resume"),
    (
        "resume to fewer episodes",
        ["search", "--resume", "{run}", "--episodes-override", "2"],
        "has run 3 episodes",
    ),
    (
        "hp value",
        [*SEARCH, "--hp", "noise_decay=abc"],
        "--hp noise_decay='abc': noise_decay must be a number",
    ),
    ("hp key", [*SEARCH, "--hp", "noise_dekay=0.9"], "'ddpg' has no setting 'noise_dekay'"),
    (
        "hp of a searcher",
        [*SEARCH, "--agent", "cem", "--hp", "population=big"],
        "population must be a whole number",
    ),
    (
        "text checkpoint",
        ["evaluate", "--checkpoint", "{text}", "--threads", "1"],
        "notes.pt is not a PyTorch file",
    ),
    (
        "not a model builder",
        ["evaluate", "--model", "os:getcwd", "--checkpoint", "none", "--threads", "1"],
        "'os:getcwd' returned a str, not a torch.nn.Module",
    ),
    (
        "negative kept",
        [*APPLY, "--policy", "{negative}"],
        "kept channels must be whole numbers of at least 1",
    ),
    ("kept beyond the layer", [*APPLY, "--policy", "{too_many}"], "impossible channel counts"),
    ("no signature", [*APPLY, "--policy", "{unsigned}"], "records no model signature"),
    (
        "name with ..",
        [*SEARCH, "--name", "../../escaped"],
        "run name '../../escaped' must be a plain folder name",
    ),
    ("absolute name", [*SEARCH, "--name", "{tmp}/abs"], "must be a plain folder name"),
    ("zip agent", [*APPLY, "--agent", "{run}/agent.zip"], "is a stable-baselines3 zip"),
]


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_fails_in_one_line_and_leaves_nothing(argv, message, bad_inputs, capsys):
    tmp = Path(bad_inputs["tmp"])
    run = Path(bad_inputs["run"])
    before = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.name != ".lock")
    run_files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    code, err = cli([a.format(**bad_inputs) for a in argv], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert message in lines[-1], err  # one line; argparse's own errors come after its usage text
    assert "Traceback" not in err and (len(lines) == 1 or err.startswith("usage: ")), err
    after = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.name != ".lock")
    assert after == before, "a refused command leaves no file or folder behind"
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == run_files
    assert not (tmp.parent.parent / "escaped").exists()


def test_config_objects_refuse_what_the_cli_refuses(tmp_path):
    for kwargs, fragment in (
        ({"episodes": 0}, "episodes must be a whole number of at least 1"),
        ({"envs": 0}, "envs must be"),
        ({"finalists": -1}, "finalists must be"),
        ({"name": "a/b"}, "plain folder name"),
        ({"name": ".."}, "plain folder name"),
        ({"agent": "random", "agent_init": "x.pt"}, "has no networks"),
    ):
        with pytest.raises(ValueError, match=fragment):
            SearchConfig(**kwargs)
    for kwargs, fragment in (({"round_to": 0}, "round_to"), ({"search_images": 0}, "search_images")):
        with pytest.raises(ValueError, match=fragment):
            EnvConfig(**kwargs)


@contextlib.contextmanager
def unprivileged():
    """Run as 'nobody' (root ignores file modes): a read-only folder is then read-only."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def read_only_dir():
    folder = Path(tempfile.mkdtemp(prefix="amc-read-only-"))  # in /tmp, which 'nobody' can reach
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)
    shutil.rmtree(folder)


def test_an_unwritable_runs_dir_or_out_fails_first(read_only_dir, tmp_path, capsys, monkeypatch):
    policy = tiny_policy().save(tmp_path / "policy.json")
    policy.chmod(0o644)
    pruned = []
    monkeypatch.setattr(amc.policy, "apply_policy", lambda *a, **k: pruned.append(1))
    with unprivileged():
        code, err = cli(["search", *TINY, "--runs-dir", str(read_only_dir / "runs"), "--no-progress"], capsys)
        assert code == 2 and f"cannot write in {read_only_dir / 'runs'}" in err and "Traceback" not in err
        code, err = cli(["apply", "--policy", str(policy), *TINY, "--out", str(read_only_dir / "o")], capsys)
        assert code == 2 and f"cannot write in {read_only_dir / 'o'}" in err
    assert not pruned and not list(read_only_dir.iterdir())  # refused before pruning anything


def test_apply_reports_measured_costs_not_the_files(tmp_path, capsys, caplog):
    policy = tiny_policy()
    truth = policy.ratios()["flops_ratio"]
    policy.cost_after = {"macs": 1, "params": 1}  # a file that claims a 0.000 FLOPs ratio
    path = policy.save(tmp_path / "policy.json")
    out = tmp_path / "applied"
    assert main(["apply", "--policy", str(path), *TINY, "--out", str(out), "--no-recalibrate"]) == 0
    printed = capsys.readouterr().out
    assert f"FLOPs {truth:.3f}" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["flops_ratio"] == pytest.approx(truth, rel=1e-9)
    assert "the policy file gives flops_ratio 0.0000" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock",
        "metrics.json",
        "pruned.policy.json",
        "pruned.pt",
    ]


@pytest.mark.slow
def test_two_searches_with_one_name_do_not_interleave(tmp_path, sample_cache, capsys):
    argv = [*TINY, "--search-images", "32", "--selection-images", "64", "--episodes", "30", "--warmup", "2"]
    argv += [
        "--hp",
        "batch_size=8",
        "--runs-dir",
        str(tmp_path),
        "--name",
        "run",
        "--no-summary",
        "--no-progress",
    ]
    env = {**os.environ, "AMC_CACHE_DIR": str(sample_cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "amc.cli", "search", *argv], env=env, stderr=subprocess.PIPE
    )
    run = tmp_path / "run"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "episodes.csv").is_file():
            time.sleep(0.1)
        assert proc.poll() is None
        code, err = cli(["search", *argv], capsys)
        assert code == 2 and f"in use by another amc process (PID {proc.pid})" in err
        code, err = cli(["search", "--resume", str(run), "--no-summary", "--no-progress"], capsys)
        assert code == 2 and f"(PID {proc.pid})" in err
        assert proc.wait(300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    episodes = [line.split(",")[0] for line in (run / "episodes.csv").read_text().splitlines()[1:]]
    assert episodes == [str(k) for k in range(1, 31)]
    assert yaml.safe_load((run / "config.yaml").read_text())["episodes"] == 30

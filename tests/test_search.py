"""The search runner: run folders, TensorBoard records, resume after a kill, transfer, and the CLI."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from amc.agents.agent_file import load_agent
from amc.agents.factory import AMCPolicy, ScaledAdam, load_preset, make_agent
from amc.agents.search import (
    LATENCY_TOLERANCE,
    SearchConfig,
    _meet_measured_latency,
    resume_search,
    run_search,
    warm_start,
)
from amc.agents.transfer import rollout_policy
from amc.envs.config import EnvConfig
from amc.envs.pruning_env import PruningEnv
from amc.envs.rewards import REWARDS
from stable_baselines3 import DDPG
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from amc.budget import Budget
from amc.cli import build_parser, main
from amc.policy import Policy

SIGMA, DECAY, WARMUP = 0.5, 0.99, 3  # the DDPG preset's noise, with a 3-episode warm-up
EPISODE_TAGS = ("episode/reward", "episode/accuracy", "episode/flops_ratio", "episode/params_ratio")
CSV_COLUMN = {
    "episode/reward": "reward",
    "episode/accuracy": "accuracy",
    "episode/flops_ratio": "flops_ratio",
    "episode/params_ratio": "params_ratio",
}


pytestmark = pytest.mark.usefixtures("shared_sample_cache")  # one decoded sample per module


def tiny_env(**overrides) -> EnvConfig:
    """An untrained width-0.25 ResNet-20 on the bundled sample, scored on 32 images."""
    settings = dict(model="resnet20", checkpoint="none", width=0.25, search_images=32)
    return EnvConfig(**{**settings, **overrides})


def tiny_search(runs_dir: Path, name: str, episodes: int, **overrides) -> SearchConfig:
    hp = {"warmup_episodes": WARMUP, "batch_size": 8}
    return SearchConfig(
        env=tiny_env(), episodes=episodes, hp=hp, runs_dir=str(runs_dir), name=name, **overrides
    )


def finalists(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "finalists.json").read_text())


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def load_events(run_dir: Path) -> EventAccumulator:
    """The TensorBoard records of a run folder (all its event files) or of one event file."""
    guidance = {
        "scalars": 0,
        "images": 0,
        "histograms": 0,
        "tensors": 0,
        "compressedHistograms": 0,
        "audio": 0,
    }
    events = EventAccumulator(str(run_dir), size_guidance=guidance)
    events.Reload()
    return events


def expected_sigma(episodes: int) -> float:
    """Sigma after ``episodes`` finished episodes: constant during the warm-up, then decaying."""
    return SIGMA * DECAY ** max(0, episodes - WARMUP)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, sample_cache) -> tuple[Path, dict]:
    """A complete 6-episode DDPG search (3 warm-up episodes, then 3 with training)."""
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMC_CACHE_DIR", str(sample_cache))
        result = run_search(tiny_search(runs, "run", 6), progress=False)
    return runs / "run", result


# --- the run folder ------------------------------------------------------------------------------


def test_run_folder_contents(finished_run):
    run_dir, result = finished_run
    assert result["run_dir"] == str(run_dir) and result["episodes"] == 6
    for name in ("config.yaml", "command.txt", "episodes.csv", "best_policy.json", "agent.pt", "agent.json"):
        assert (run_dir / name).is_file(), name
    for name in ("buffer.npz", "state.json"):
        assert (run_dir / name).is_file(), name
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # see test_one_event_file_per_process
    assert not list(run_dir.glob("*.tmp*"))

    config = SearchConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert config.episodes == 6 and config.agent == "ddpg" and config.name == "run"
    assert config.env == tiny_env()
    assert config.hp == {"warmup_episodes": WARMUP, "batch_size": 8}
    assert (run_dir / "command.txt").read_text().strip()

    rows = read_rows(run_dir / "episodes.csv")
    assert [int(r["episode"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    header = next(csv.reader((run_dir / "episodes.csv").open()))
    units = header[6:-1]
    assert header[:6] == ["episode", "reward", "accuracy", "flops_ratio", "params_ratio", "latency_ratio"]
    assert header[-1] == "scored_images" and len(units) == 12
    assert all(r["scored_images"] == "" for r in rows)  # 32 images per episode: too few to race
    for r in rows:
        assert float(r["flops_ratio"]) <= 0.5
        assert float(r["reward"]) == pytest.approx(float(r["accuracy"]) / 100 - 1, abs=1e-5)
        assert all(0.0 <= float(r[u]) <= 0.8 for u in units)

    state = json.loads((run_dir / "state.json").read_text())
    assert state["episodes"] == 6 and state["num_timesteps"] == 6 * 12
    assert state["noise"]["episodes"] == 6
    assert state["noise"]["sigma"] == pytest.approx(expected_sigma(6))
    best_row = max(rows, key=lambda r: float(r["reward"]))  # first of equals, as the search keeps
    assert state["best"]["episode"] == int(best_row["episode"])
    assert state["best"]["reward"] == pytest.approx(float(best_row["reward"]), abs=1e-6)

    # The finalists: every episode here (6 < 10), best reward first; re-ranked on the selection images.
    by_reward = sorted(rows, key=lambda r: (-float(r["reward"]), int(r["episode"])))
    assert [c["episode"] for c in state["candidates"]] == [int(r["episode"]) for r in by_reward]
    ranked = finalists(run_dir)
    episodes = [f for f in ranked if f["source"] == "episode"]
    assert sorted(f["episode"] for f in episodes) == [1, 2, 3, 4, 5, 6]
    extra = {f["source"]: f for f in ranked if f["source"] != "episode"}
    assert set(extra) == {"actor", "uniform"} and all(f["episode"] is None for f in extra.values())
    assert len(set(extra["uniform"]["sparsities"])) == 1  # one sparsity for every unit
    selection_rewards = [f["selection_reward"] for f in ranked]
    assert selection_rewards == sorted(selection_rewards, reverse=True)
    for f in ranked:
        assert f["selection_reward"] == pytest.approx(f["selection_accuracy"] / 100 - 1, abs=1e-6)
        assert f["flops_ratio"] <= 0.5
    for f in episodes:
        row = rows[f["episode"] - 1]
        assert f["sparsities"] == pytest.approx([float(row[u]) for u in units], abs=1e-6)
        assert f["accuracy"] == pytest.approx(float(row["accuracy"]), abs=1e-4)
    final = ranked[0]
    assert result["best"] == {k: v for k, v in final.items() if k != "sparsities"}

    policy = Policy.load(run_dir / "best_policy.json")
    for key in ("episode", "source", "selection_accuracy", "accuracy"):
        assert policy.metrics[key] == final[key], key
    assert list(policy.sparsities) == units
    assert list(policy.sparsities.values()) == pytest.approx(final["sparsities"])
    assert policy.ratios()["flops_ratio"] <= 0.5 and policy.model == "resnet20"

    with np.load(run_dir / "buffer.npz") as z:
        pos, full, episodes, baseline = z["meta"]
        assert (pos, full, episodes) == (72, 0, 6) and np.isfinite(baseline)
        assert z["dones"][:72, 0].sum() == 6 and z["dones"][11, 0] == 1


def test_without_selection_images_the_best_episode_is_final(tmp_path):
    config = tiny_search(tmp_path, "run", 4, finalists=2)
    config.env.selection_images = 0
    result = run_search(config, progress=False)
    run_dir = tmp_path / "run"
    state = json.loads((run_dir / "state.json").read_text())
    assert not (run_dir / "finalists.json").exists() and len(state["candidates"]) == 2
    top = {k: v for k, v in state["candidates"][0].items() if k not in ("sparsities", "source")}
    assert result["best"] == state["best"] == top
    assert Policy.load(run_dir / "best_policy.json").metrics["episode"] == top["episode"]


def test_latency_budget_is_corrected_by_the_measured_latency(monkeypatch):
    """The final policy's *measured* latency ends within tolerance of the target.

    The stand-in machine runs 12 % slower (relative to dense) than the table predicts, so the
    policy that meets the predicted budget misses the measured one until it is re-budgeted.
    """

    def table(pruner, config, shape):
        return lambda kept: 0.01 * float(sum(kept)) + 0.5

    monkeypatch.setattr("amc.envs.config.latency_function", table)
    env = PruningEnv(tiny_env(metric="latency", target=0.6, selection_images=64))
    monkeypatch.setattr(env.backend, "measured_latency", lambda s: 1.12 * env.backend.costs(s)["latency"])
    env.action_space.seed(0)
    env.reset()
    for _ in range(env.n):
        *_, info = env.step(env.action_space.sample())
    row = {"source": "episode", "episode": 1, "sparsities": info["sparsities"]}
    fixed = _meet_measured_latency(env, row)
    assert abs(fixed["measured_latency"] / 0.6 - 1) <= LATENCY_TOLERANCE
    assert fixed["latency_budget"] < 0.6 and fixed["sparsities"] != row["sparsities"]
    assert fixed["latency_ratio"] <= fixed["latency_budget"] + 1e-12
    assert {"accuracy", "selection_accuracy", "reward"} <= set(fixed)
    monkeypatch.setattr(env.backend, "measured_latency", lambda s: env.backend.costs(s)["latency"])
    assert _meet_measured_latency(env, row) == {**row, "measured_latency": info["latency_ratio"]}


def test_agent_file_rebuilds_the_ddpg_agent(finished_run):
    run_dir, _ = finished_run
    spec, agent = load_agent(run_dir / "agent.pt")
    assert spec.algorithm == "ddpg" and isinstance(agent, DDPG)
    assert isinstance(agent.policy, AMCPolicy)
    assert isinstance(agent.critic.optimizer, ScaledAdam)
    assert agent.critic.optimizer.scale == pytest.approx(10.0)
    assert agent.learning_starts == WARMUP * 12
    obs = np.full(agent.observation_space.shape, 0.5, dtype=np.float32)
    action, _ = agent.predict(obs, deterministic=True)
    assert action.shape == (1,) and -1.0 <= action[0] <= 1.0


def test_tensorboard_records(finished_run):
    run_dir, _ = finished_run
    rows = read_rows(run_dir / "episodes.csv")
    events = load_events(run_dir)
    tags = events.Tags()
    scalars = set(tags["scalars"])
    for tag in (*EPISODE_TAGS, "best/reward", "best/accuracy", "best/flops_ratio", "episode/noise_sigma"):
        assert tag in scalars, tag
    for tag in EPISODE_TAGS:
        series = events.Scalars(tag)
        assert [e.step for e in series] == [1, 2, 3, 4, 5, 6], tag
        expected = [float(r[CSV_COLUMN[tag]]) for r in rows]
        np.testing.assert_allclose([e.value for e in series], expected, atol=1e-4, err_msg=tag)

    best_reward, best_accuracy, running, running_acc = [], [], -np.inf, 0.0
    for r in rows:
        if float(r["reward"]) > running:
            running, running_acc = float(r["reward"]), float(r["accuracy"])
        best_reward.append(running)
        best_accuracy.append(running_acc)
    for tag, expected in (("best/reward", best_reward), ("best/accuracy", best_accuracy)):
        series = events.Scalars(tag)
        assert [e.step for e in series] == [1, 2, 3, 4, 5, 6], tag
        np.testing.assert_allclose([e.value for e in series], expected, atol=1e-4, err_msg=tag)

    final = finalists(run_dir)[0]
    for tag, key in (("final/selection_accuracy", "selection_accuracy"), ("final/accuracy", "accuracy")):
        (event,) = events.Scalars(tag)
        assert event.step == 6 and event.value == pytest.approx(final[key], abs=1e-4), tag

    sigma = [e.value for e in events.Scalars("episode/noise_sigma")]
    np.testing.assert_allclose(sigma, [expected_sigma(k) for k in range(6)], rtol=1e-6)

    assert "best/policy" in tags["images"]
    image = events.Images("best/policy")[0]
    assert image.width > 0 and image.height > 0 and image.encoded_image_string.startswith(b"\x89PNG")
    assert "episode/actions" in tags["histograms"]
    histograms = events.Histograms("episode/actions")
    assert [h.step for h in histograms] == [1, 2, 3, 4, 5, 6]
    assert all(h.histogram_value.num == 12 for h in histograms)

    text_tags = [t for t in tags["tensors"] if t.startswith("best/policy_table")]
    assert text_tags, tags["tensors"]
    table = events.Tensors(text_tags[0])[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| unit | sparsity | kept |") and "layer1.0.conv1" in table

    # stable-baselines3's own training losses, logged once training started (after the warm-up)
    for tag in ("train/actor_loss", "train/critic_loss"):
        assert tag in scalars, tag
        steps = [e.step for e in events.Scalars(tag)]
        assert steps and min(steps) > WARMUP * 12 and all(np.isfinite(e.value) for e in events.Scalars(tag))


def test_one_event_file_per_process(finished_run):
    """The agent and the recorder log through one logger: one event file holds everything."""
    run_dir, _ = finished_run
    (path,) = run_dir.glob("events.out.tfevents.*")
    events = load_events(path)
    tags = events.Tags()
    scalars = set(tags["scalars"])
    assert {*EPISODE_TAGS, "best/reward", "final/accuracy", "hparam/best_reward"} <= scalars
    assert {"train/actor_loss", "train/critic_loss"} <= scalars  # stable-baselines3's, at its timesteps
    assert {"best/policy", "search/sparsity_heatmap"} <= set(tags["images"])
    assert "episode/actions" in tags["histograms"]
    assert any(t.startswith("best/policy_table") for t in tags["tensors"])
    assert any(t.startswith("run/hparams") for t in tags["tensors"])
    # the episode records stay on the episode axis, the agent's on its timesteps
    assert [e.step for e in events.Scalars("episode/reward")] == [1, 2, 3, 4, 5, 6]
    assert min(e.step for e in events.Scalars("train/actor_loss")) > WARMUP * 12


def test_existing_run_folder_is_refused(finished_run, capsys):
    run_dir, _ = finished_run
    before = (run_dir / "episodes.csv").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        run_search(tiny_search(run_dir.parent, "run", 6), progress=False)
    argv = ["search", "--checkpoint", "none", "--width", "0.25", "--runs-dir", str(run_dir.parent)]
    assert main([*argv, "--name", "run", "--no-progress", "--no-summary"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("amc: error: ") and "--resume" in err and str(run_dir) in err
    assert (run_dir / "episodes.csv").read_text() == before


def test_rollout_on_another_model(finished_run):
    run_dir, _ = finished_run
    config = tiny_env(model="plain20", target=0.4)
    torch.manual_seed(0)  # the untrained model's weights: the blends are chosen by its scores
    policy = rollout_policy(run_dir / "agent.pt", config)
    assert policy.model == "plain20" and policy.mode == "channel"
    assert len(policy.sparsities) == 19
    assert policy.ratios()["flops_ratio"] <= 0.4
    assert all(0.0 <= s <= 0.8 for s in policy.sparsities.values())
    # Deterministic actor: the same rollout again gives the same policy.
    torch.manual_seed(0)
    assert rollout_policy(run_dir, config, algo="ddpg").sparsities == policy.sparsities  # the run folder


def test_apply_with_an_agent_loads_model_and_data_once(finished_run, tmp_path, monkeypatch):
    import amc.envs.config

    import amc.cli.common

    run_dir, _ = finished_run
    real, calls = amc.cli.common.load_model_and_data, []

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(amc.cli.common, "load_model_and_data", counted)
    monkeypatch.setattr(amc.envs.config, "load_model_and_data", counted)
    argv = ["apply", "--agent", str(run_dir / "agent.pt"), "--model", "resnet20", "--checkpoint", "none"]
    argv += ["--width", "0.25", "--search-images", "32", "--threads", "1", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert calls == ["resnet20"] and (tmp_path / "out" / "pruned.pt").is_file()


def test_rollout_keeps_the_best_blend_with_uniform_on_the_search_images(finished_run):
    run_dir, _ = finished_run

    def rollout(**kwargs):
        torch.manual_seed(0)  # the same untrained model every time
        return rollout_policy(run_dir / "agent.pt", tiny_env(model="plain20"), **kwargs)

    bare = rollout(blends=())
    assert bare.metrics["actor_weight"] == 1.0
    blended = rollout()
    torch.manual_seed(0)
    env = PruningEnv(tiny_env(model="plain20"))
    uniform = env.evaluate(env.uniform_sparsities())
    assert blended.metrics["accuracy"] >= max(bare.metrics["accuracy"], uniform["accuracy"])
    assert blended.metrics["actor_weight"] in (1.0, 0.75, 0.5, 0.25, 0.0)
    only_uniform = rollout(blends=(0.0,))
    assert only_uniform.metrics["accuracy"] == pytest.approx(
        max(uniform["accuracy"], bare.metrics["accuracy"])
    )


def test_rollout_errors(finished_run, tmp_path):
    run_dir, _ = finished_run
    with pytest.raises(FileNotFoundError, match=r"agent\.pt"):
        rollout_policy(tmp_path / "absent.pt", tiny_env())
    with pytest.raises(ValueError, match=r"cannot load agent .* holds a ddpg agent, not sac"):
        rollout_policy(run_dir / "agent.pt", tiny_env(), algo="sac")


# --- resume --------------------------------------------------------------------------------------


def test_resume_after_a_simulated_kill(tmp_path):
    run_search(tiny_search(tmp_path, "run", 4), progress=False)
    run_dir = tmp_path / "run"
    before = read_rows(run_dir / "episodes.csv")
    assert len(before) == 4
    # A kill after episode 5 was written to the CSV but before its checkpoint (and in the
    # middle of writing row 6): state.json still says 4.
    with (run_dir / "episodes.csv").open("a") as f:
        f.write("5,-0.5,50.0,0.5,0.5,," + ",".join(["0.1"] * 12) + "\n6,-0.4,60")
    result = resume_search(run_dir, episodes=7, progress=False)
    assert result["episodes"] == 7
    rows = read_rows(run_dir / "episodes.csv")
    assert [int(r["episode"]) for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[:4] == before
    assert rows[4]["reward"] != "-0.5"  # the uncheckpointed episode was redone
    state = json.loads((run_dir / "state.json").read_text())
    assert state["episodes"] == 7 and state["num_timesteps"] == 7 * 12
    # The noise goes on as in an uninterrupted run (no extra decay for the restart).
    assert state["noise"] == {"sigma": pytest.approx(expected_sigma(7)), "episodes": 7}
    assert SearchConfig.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text())).episodes == 7
    assert len((run_dir / "command.txt").read_text().splitlines()) == 2
    with np.load(run_dir / "buffer.npz") as z:
        assert tuple(z["meta"][:3]) == (84, 0, 7)
    first, second = sorted(run_dir.glob("events.out.tfevents.*"))  # one event file per search process
    assert [e.step for e in load_events(first).Scalars("episode/reward")] == [1, 2, 3, 4]
    assert [e.step for e in load_events(second).Scalars("episode/reward")] == [5, 6, 7]
    events = load_events(run_dir)
    assert [e.step for e in events.Scalars("episode/reward")] == [1, 2, 3, 4, 5, 6, 7]
    np.testing.assert_allclose(
        [e.value for e in events.Scalars("episode/reward")], [float(r["reward"]) for r in rows], atol=1e-5
    )
    # Resuming a finished run does nothing more.
    assert resume_search(run_dir, progress=False)["episodes"] == 7
    assert len(read_rows(run_dir / "episodes.csv")) == 7


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.yaml"):
        resume_search(tmp_path)


def test_kill_9_then_resume_from_the_cli(tmp_path, sample_cache):
    total = 40
    argv = ["--model", "resnet20", "--checkpoint", "none", "--width", "0.25", "--search-images", "32"]
    argv += ["--episodes", str(total), "--warmup", str(WARMUP), "--hp", "batch_size=8"]
    argv += ["--runs-dir", str(tmp_path), "--name", "run", "--threads", "1", "--no-summary", "--no-progress"]
    run_dir = tmp_path / "run"
    env = {**os.environ, "AMC_CACHE_DIR": str(sample_cache), "OMP_NUM_THREADS": "1"}
    with (tmp_path / "out.txt").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "amc.cli", "search", *argv], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                path = run_dir / "episodes.csv"
                if path.is_file() and len(path.read_text().splitlines()) >= 4:  # header + 3 rows
                    break
                time.sleep(0.05)
            assert proc.poll() is None, (tmp_path / "out.txt").read_text()
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((run_dir / "state.json").read_text())
    checkpointed = state["episodes"]
    before = read_rows(run_dir / "episodes.csv")
    assert 2 <= checkpointed < total and len(before) >= checkpointed

    assert main(["search", "--resume", str(run_dir), "--no-summary", "--no-progress"]) == 0
    rows = read_rows(run_dir / "episodes.csv")
    assert [int(r["episode"]) for r in rows] == list(range(1, total + 1))
    assert rows[:checkpointed] == before[:checkpointed]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["episodes"] == total and state["num_timesteps"] == total * 12
    assert state["noise"]["sigma"] == pytest.approx(expected_sigma(total))
    final = finalists(run_dir)[0]
    assert Policy.load(run_dir / "best_policy.json").metrics["source"] == final["source"]
    assert Policy.load(run_dir / "best_policy.json").metrics["episode"] == final["episode"]
    ranked_episodes = {f["episode"] for f in finalists(run_dir) if f["source"] == "episode"}
    assert {c["episode"] for c in state["candidates"]} == ranked_episodes


# --- the command line ----------------------------------------------------------------------------


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


COMMON = {
    "--model",
    "--width",
    "--checkpoint",
    "--dataset",
    "--data",
    "--split-seed",
    "--device",
    "--threads",
}
ENV_OPTIONS = {"--target", "--mode", "--reward", "--max-sparsity", "--round-to", "--criterion"}
ENV_OPTIONS |= {"--no-reconstruct", "--no-recalibrate", "--search-images", "--selection-images"}
OPTIONS = {
    "search": COMMON
    | ENV_OPTIONS
    | {"--agent", "--episodes", "--warmup", "--seed", "--envs", "--hp", "--runs-dir", "--name", "--resume"}
    | {"--finalists"}
    | {"--episodes-override", "--no-progress", "--no-summary"},
    "apply": COMMON
    | ENV_OPTIONS - {"--reward", "--selection-images"}
    | {"--policy", "--agent", "--finetune-epochs", "--finetune-lr", "--out"},
    "compare": COMMON
    | ENV_OPTIONS - {"--mode", "--reward"}
    | {"--baselines", "--policy", "--trials", "--seed", "--out"},
}
WORDS = {
    "search": ("flops=0.5", "channel", "finegrained", *REWARDS),
    "apply": ("flops=0.5", "channel", "finegrained"),  # the --agent rollout ranks by the default reward
    "compare": ("flops=0.5", "params=0.3"),  # channel pruning at a flops or params budget
}


@pytest.mark.parametrize("command", ["search", "apply", "compare"])
def test_help_lists_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    declared = set()
    for action in subparser(command)._actions:
        declared.update(action.option_strings)
        for option in action.option_strings:
            assert option in text, option
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help"
    assert OPTIONS[command] <= declared, OPTIONS[command] - declared
    for word in WORDS[command]:
        assert word in text, word
    if command == "search":
        for agent in ("ddpg", "td3", "sac"):
            assert agent in text


@pytest.mark.parametrize("target", ["flops=2", "flops=0", "energy=0.5", "flops", "flops=abc"])
def test_bad_target_exits_2_with_a_message(target, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--target", target])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"bad target '{target}'" in err and "flops=0.5" in err


def test_target_parsing():
    args = build_parser().parse_args(["search", "--target", "params=0.3"])
    assert args.target == Budget("params", 0.3)
    assert build_parser().parse_args(["search", "--target", "none"]).target == Budget("flops", None)
    assert build_parser().parse_args(["search"]).target == Budget("flops", 0.5)


def fake_run(
    path: Path, agent: str, seed: int, best: float, accuracies: list[float], source="episode", race_slice=0
) -> Path:
    """A finished run folder with the files ``amc summarize`` reads."""
    path.mkdir(parents=True)
    rows = [
        {"name": "dense", "top1": 86.0, "flops_ratio": 1.0},
        {"name": "best", "top1": best, "flops_ratio": 0.49},
        {"name": "uniform", "top1": 72.0, "flops_ratio": 0.5},
    ]
    (path / "summary.json").write_text(json.dumps(rows))
    (path / "state.json").write_text(json.dumps({"episodes": len(accuracies), "elapsed": 480.0}))
    (path / "best_policy.json").write_text(json.dumps({"metrics": {"source": source, "episode": 7}}))
    (path / "config.yaml").write_text(
        yaml.safe_dump({"env": {"model": "resnet20", "race_slice": race_slice}, "agent": agent, "seed": seed})
    )
    with (path / "episodes.csv").open("w") as f:
        f.write("episode,accuracy\n" + "".join(f"{k + 1},{a}\n" for k, a in enumerate(accuracies)))
    return path


def test_summarize_reports_mean_and_std_of_the_gain(tmp_path, capsys):
    runs = [
        fake_run(tmp_path / "run0", "ddpg", 0, 75.0, [50.0, 60.0]),
        fake_run(tmp_path / "run1", "ddpg", 1, 73.0, [50.0, 60.0], source="uniform"),
    ]
    assert main(["summarize", *map(str, runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "ddpg, best 75.00 % (episode 7)" in out[0] and "gain +3.00" in out[0]
    assert "gain +1.00" in out[1] and "(the uniform policy)" in out[1]
    assert out[2] == (
        "2 runs: best 74.00 ± 1.41 %, uniform 72.00 ± 0.00 %, "
        "gain 2.00 ± 1.41 points, 8.00 ± 0.00 min per run"
    )
    assert len(out) == 3  # one searcher: no side-by-side table


def test_summarize_compares_searchers_seed_by_seed_against_random(tmp_path, capsys):
    runs = [
        fake_run(tmp_path / "r0", "random", 0, 74.0, [50.0, 55.0, 60.0, 61.0]),
        fake_run(tmp_path / "r1", "random", 1, 76.0, [52.0, 58.0, 59.0, 62.0]),
        fake_run(tmp_path / "c0", "cem", 0, 76.5, [50.0, 61.0, 63.0, 64.0]),
        fake_run(tmp_path / "c1", "cem", 1, 75.5, [50.0, 58.0, 62.0, 66.0]),
    ]
    assert main(["summarize", *map(str, runs)]) == 0
    table = capsys.readouterr().out.splitlines()[5:]
    assert table[0].startswith("| model | searcher | episodes |")
    random_row, cem_row = table[2], table[3]
    assert random_row.startswith("| resnet20 | random | 4 | 74.00 (s0), 76.00 (s1) | 75.00 ± 1.41 |")
    # cem: +2.5 and -0.5 against random (mean +1.00, 1 win of 2); it reached random's best
    # search accuracy (61 and 62) at episodes 2 and 3: median 2.5.
    assert (
        cem_row == "| resnet20 | cem | 4 | 76.50 (s0), 75.50 (s1) | 76.00 ± 0.71 | +1.00 | 1/2 | 2.5 of 4 |"
    )


def test_summarize_keeps_raced_runs_apart_and_pairs_them_with_random(tmp_path, capsys):
    runs = [
        fake_run(tmp_path / "r0", "random", 0, 74.0, [50.0, 60.0]),
        fake_run(tmp_path / "d0", "ddpg", 0, 77.0, [50.0, 60.0]),
        fake_run(tmp_path / "d0r", "ddpg", 0, 76.0, [50.0, 61.0], race_slice=200),
    ]
    assert main(["summarize", *map(str, runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("d0r: ddpg (raced), best 76.00 %")
    rows = out[-3:]
    assert rows[0].startswith("| resnet20 | random | 2 | 74.00 (s0) |")
    assert rows[1] == "| resnet20 | ddpg | 2 | 77.00 (s0) | 77.00 ± 0.00 | +3.00 | 1/1 | 2 of 2 |"
    assert rows[2] == "| resnet20 | ddpg (raced) | 2 | 76.00 (s0) | 76.00 ± 0.00 | +2.00 | 1/1 | 2 of 2 |"


def test_summarize_refuses_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("agent: ddpg\n")
    assert main(["summarize", str(tmp_path / "run")]) == 2
    assert "not a finished search run: summary.json is missing" in capsys.readouterr().err


def test_warm_start_from_an_earlier_agent(finished_run, tmp_path):
    run_dir, _ = finished_run
    _, trained = load_agent(run_dir / "agent.pt")
    env = PruningEnv(tiny_env())
    agent, _ = make_agent("ddpg", env, load_preset("ddpg", overrides={"batch_size": 8}), env.n, seed=5)
    assert not torch.equal(agent.actor.mu[0].weight, trained.actor.mu[0].weight)
    warm_start(agent, run_dir / "agent.pt")
    for name, tensor in trained.policy.state_dict().items():
        assert torch.equal(agent.policy.state_dict()[name], tensor), name
    config = tiny_search(tmp_path, "warm", 2, agent_init=str(run_dir / "agent.pt"))
    del config.hp["warmup_episodes"]  # --agent-init makes the warm-up default 0
    result = run_search(config, progress=False)
    assert result["warmup"] == 0 and result["episodes"] == 2
    state = json.loads((tmp_path / "warm" / "state.json").read_text())
    assert state["noise"]["sigma"] == pytest.approx(SIGMA * DECAY**2)  # learning from the first episode


def test_warm_start_errors(finished_run, tmp_path):
    run_dir, _ = finished_run
    with pytest.raises(FileNotFoundError, match=r"agent file .* does not exist"):
        run_search(tiny_search(tmp_path, "a", 1, agent_init=str(tmp_path / "none.pt")), progress=False)
    with pytest.raises(
        ValueError,
        match=r"cannot warm-start .* do not fit this sac agent; use an agent.pt saved by the same --agent",
    ):
        run_search(
            tiny_search(tmp_path, "b", 1, agent="sac", agent_init=str(run_dir / "agent.pt")), progress=False
        )
    with pytest.raises(ValueError, match="'cem' has no networks"):
        run_search(
            tiny_search(tmp_path, "c", 1, agent="cem", agent_init=str(run_dir / "agent.pt")), progress=False
        )

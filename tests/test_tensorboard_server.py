"""A real TensorBoard server shows a search run's curves: the same numbers as episodes.csv."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from amc.agents.search import SearchConfig, run_search
from amc.envs.config import EnvConfig

EPISODES = 5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard_command() -> list[str]:
    script = Path(sys.executable).with_name("tensorboard")
    if script.is_file():
        return [str(script)]
    found = shutil.which("tensorboard")
    return [found] if found else [sys.executable, "-m", "tensorboard.main"]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    env = EnvConfig(model="resnet20", checkpoint="none", width=0.25, search_images=32)
    hp = {"warmup_episodes": 2, "batch_size": 8}
    config = SearchConfig(env=env, episodes=EPISODES, hp=hp, runs_dir=str(tmp_path), name="run")
    run_search(config, progress=False)
    return tmp_path / "run"


def test_tensorboard_serves_the_episode_rewards(run_dir: Path, tmp_path: Path):
    with (run_dir / "episodes.csv").open(newline="") as f:
        rewards = [float(r["reward"]) for r in csv.DictReader(f)]
    assert len(rewards) == EPISODES

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "tensorboard.log").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*tensorboard_command(), "--logdir", str(run_dir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.time() + 60
        runs, series = [], []
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "tensorboard.log").read_text()
            try:
                runs = get_json(f"{base}/data/runs")
                if runs:
                    query = urllib.parse.urlencode({"tag": "episode/reward", "run": runs[0]})
                    series = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
                    if len(series) >= EPISODES:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass  # not up yet, or the run is still loading
            time.sleep(0.3)
        else:
            output = (tmp_path / "tensorboard.log").read_text()
            pytest.fail(f"TensorBoard gave runs={runs} series={series}: {output}")
        assert runs == ["."]  # the event files sit in the log folder itself
        assert len(series) == EPISODES
        assert [step for _, step, _ in series] == list(range(1, EPISODES + 1))
        assert [value for _, _, value in series] == pytest.approx(rewards, abs=1e-5)
        tags = get_json(f"{base}/data/plugin/scalars/tags")
        assert {"episode/reward", "episode/accuracy", "best/reward"} <= set(tags["."])
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        log.close()

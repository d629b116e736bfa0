"""Gymnasium environments of amc-pruner (installed as ``amc.envs``).

>>> import gymnasium as gym, amc.envs
>>> env = gym.make("amc/ChannelPruning-v0")                       # shipped ResNet-20, bundled sample
>>> env = gym.make("amc/ChannelPruning-v0", model="plain20", target=0.3)
"""

from amc.envs.config import EnvConfig
from amc.envs.rewards import REWARDS, register_reward
from gymnasium.envs.registration import register

__all__ = ["REWARDS", "EnvConfig", "PruningEnv", "register_reward"]

register(
    id="amc/ChannelPruning-v0", entry_point="amc.envs.pruning_env:PruningEnv", kwargs={"mode": "channel"}
)
register(
    id="amc/FineGrainedPruning-v0",
    entry_point="amc.envs.pruning_env:PruningEnv",
    kwargs={"mode": "finegrained", "reward": "acc_params", "target": None},
)


def __getattr__(name: str):
    if name == "PruningEnv":
        from amc.envs.pruning_env import PruningEnv

        return PruningEnv
    raise AttributeError(name)

"""Elite imitation: pull the actor towards the best episodes found so far.

The AMC critic learns, per step, how good an action is on average over the episodes it has
seen; the actor it trains settles on a policy that is good on average but rarely beats the
best random episodes (the best of many draws). :class:`EliteImitation` adds the missing
pull towards the top: after every learned episode it takes a few behaviour-cloning steps
that move the actor's action, on the states of the ``elite_episodes`` best episodes so far
(kept by :class:`~amc.agents.buffer.EpisodeRewardReplayBuffer`), towards the actions those
episodes applied. The exploration noise then searches around the elites, while the critic
keeps shaping the actor between them (self-imitation, as in Oh et al., ICML 2018).
"""

from __future__ import annotations

import torch
from stable_baselines3.common.callbacks import BaseCallback


class EliteImitation(BaseCallback):
    """Behaviour-clone the actor towards the elite episodes after every episode (a plug-in callback).

    Args:
        steps: Gradient steps per episode (0: off).
        learning_rate: Learning rate of the imitation optimiser (Adam, its own state).
        start_episode: First episode after which to imitate (the warm-up's end).
    """

    def __init__(self, steps: int = 10, learning_rate: float = 1e-3, start_episode: int = 0):
        super().__init__()
        self.steps, self.learning_rate, self.start_episode = steps, learning_rate, start_episode
        self.optimizer: torch.optim.Optimizer | None = None

    def _on_training_start(self) -> None:
        self.optimizer = torch.optim.Adam(self.model.actor.parameters(), lr=self.learning_rate)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.replay_buffer
        if not self.steps or not buffer.elites or buffer.episodes < self.start_episode:
            return
        obs, actions = (torch.as_tensor(x, device=self.model.device) for x in buffer.elite_transitions())
        actor = self.model.actor
        actor.set_training_mode(True)
        for _ in range(self.steps):
            loss = torch.nn.functional.mse_loss(actor(obs), actions)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        actor.set_training_mode(False)
        self.logger.record("train/imitation_loss", loss.item())

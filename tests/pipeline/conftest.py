"""Fixtures of the evaluation tests: `LineEnv`, a one-dimensional env built for them (milliseconds per
episode, exact arithmetic), and tiny untrained agents."""

import gymnasium
import numpy as np
import pytest

from models.sorl import SORLAgent
from pipeline.config import make_run_config


class LineEnv(gymnasium.Env):
    """x starts at `start` (+ U(-jitter, jitter) from the reset seed), each action adds a[0] to x.
    Success: |x - 1| < 0.05 after the step (post-step). Reward -1 until success, then 0.
    Observations [x, steps taken]."""

    def __init__(self, start=0.0, jitter=0.0, terminate_at_goal=False):
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.start, self.jitter, self.terminate_at_goal = start, jitter, terminate_at_goal

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.start + self.np_random.uniform(-self.jitter, self.jitter)
        self.t = 0
        return self._observation(), {}

    def step(self, action):
        self.x += float(np.asarray(action).reshape(-1)[0])
        self.t += 1
        success = abs(self.x - 1.0) < 0.05
        return self._observation(), (0.0 if success else -1.0), success and self.terminate_at_goal, False, {
            "success": success}

    def _observation(self):
        return np.array([self.x, self.t], np.float32)


def make_tiny_agent(obs_dim: int, action_dim: int, hidden=(8, 8), seed: int = 0) -> SORLAgent:
    """An untrained SORLAgent with the cube preset and small networks."""
    config = make_run_config("cube", {"actor_hidden_dims": tuple(hidden), "critic_hidden_dims": tuple(hidden),
                                      "seed": seed})
    return SORLAgent(config.agent, obs_dim=obs_dim, action_dim=action_dim)


@pytest.fixture(scope="session")
def line_env():
    """The LineEnv class (a zero-argument env factory; call it with arguments for variants)."""
    return LineEnv


@pytest.fixture(scope="session")
def tiny_agent():
    """tiny_agent(obs_dim, action_dim, hidden=(8, 8), seed=0) -> an untrained SORLAgent."""
    return make_tiny_agent


@pytest.fixture(scope="session")
def line_agent():
    """A tiny agent for LineEnv (obs_dim 2, action_dim 1)."""
    return make_tiny_agent(2, 1, seed=1)

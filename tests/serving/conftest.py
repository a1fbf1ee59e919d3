"""Shared fixtures for the serving tests: one small real SORLAgent and its export per session."""
import numpy as np
import pytest
import tensorflow as tf

from models.config import AgentConfig
from models.noise import SEED_SALT
from models.sorl import SORLAgent
from serving import export

OBS_DIM, ACTION_DIM = 6, 3
SMALL_NETS = dict(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32))


def make_agent(seed: int = 0) -> SORLAgent:
    return SORLAgent(AgentConfig(**SMALL_NETS, seed=seed), OBS_DIM, ACTION_DIM)


@pytest.fixture(scope="session")
def agent():
    return make_agent(seed=0)


@pytest.fixture(scope="session")
def agent_factory():
    """agent_factory(seed) -> a fresh small SORLAgent whose weights depend on `seed`."""
    return make_agent


@pytest.fixture(scope="session")
def export_dir(agent, tmp_path_factory):
    """RUN/export/1 of the session agent with the default budgets (1, 2, 4, 8) and best-of 4x8."""
    return export.export_saved_model(agent, str(tmp_path_factory.mktemp("export")))


def row_noise(seeds, num_samples: int) -> np.ndarray:
    """The seeded signatures' noise contract, written out independently: row i is
    stateless_normal([N, A], seed=[seeds[i], SEED_SALT])."""
    return np.stack([
        tf.random.stateless_normal([num_samples, ACTION_DIM],
                                   seed=tf.constant([int(s), SEED_SALT], tf.int64)).numpy()
        for s in seeds])


def expected_actions(agent, observations, seeds, euler_steps: int, num_samples: int) -> np.ndarray:
    """What the in-process agent answers for these observations and per-row seeds."""
    noise = row_noise(seeds, num_samples)
    return agent.act(tf.constant(observations), euler_steps=euler_steps, num_samples=num_samples,
                     noise=tf.constant(noise)).numpy()


@pytest.fixture(scope="session")
def seeded_row_noise():
    """seeded_row_noise(seeds, N) -> [len(seeds), N, A] (see row_noise)."""
    return row_noise


@pytest.fixture(scope="session")
def expected():
    """expected(agent, observations, seeds, euler_steps, num_samples) -> actions (see expected_actions)."""
    return expected_actions


@pytest.fixture
def observations():
    return np.random.default_rng(7).normal(size=[5, OBS_DIM]).astype(np.float32)

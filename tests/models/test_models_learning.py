"""SORL learns a small problem made for it: a contextual bandit with a two-mode behaviour dataset.

Single-step episodes (mask 0), context s ~ N(0, I_2) that the reward ignores, 1-D actions drawn
half from a "bad" mode N(-0.5, 0.1^2) and half from a "good" mode N(0.5, 0.1^2), reward
r(a) = 1 - 2|a - 0.5| (about -1 in the bad mode, peaked at the good mode's centre, so the learned
critic gives no reason to leave the data's support). Behaviour cloning alone would put half of its
actions in each mode; the Q loss must move the policy to the good mode while flow matching and
self-consistency keep it on the data. Small networks and a raised learning rate keep this to a few
hundred steps.
"""

import numpy as np
import tensorflow as tf

from models.config import AgentConfig
from models.sorl import SORLAgent

STEPS = 1000


def reward(actions):
    return 1.0 - 2.0 * np.abs(actions[:, 0] - 0.5)


def behaviour_data(rng, rows=4096):
    good = rng.random(rows) < 0.5
    actions = (np.where(good, 0.5, -0.5) + 0.1 * rng.normal(size=rows)).clip(-1, 1)[:, None].astype(np.float32)
    observations = rng.normal(size=(rows, 2)).astype(np.float32)
    return {
        "observations": observations,
        "actions": actions,
        "next_observations": observations,
        "rewards": reward(actions).astype(np.float32),
        "masks": np.zeros(rows, np.float32),
        "terminals": np.ones(rows, np.float32),
    }


def test_policy_picks_the_high_value_mode_and_stays_on_the_data():
    rng = np.random.default_rng(0)
    data = behaviour_data(rng)
    config = AgentConfig(actor_hidden_dims=(64, 64), critic_hidden_dims=(64, 64), batch_size=256, actor_lr=3e-3,
                         critic_lr=3e-3, q_loss_coef=100.0)
    dataset = tf.data.Dataset.from_tensor_slices(data).shuffle(4096, seed=0).repeat().batch(256, drop_remainder=True)
    agent = SORLAgent(config, obs_dim=2, action_dim=1)
    agent.compile(jit_compile=False)
    history = agent.fit(dataset, steps_per_epoch=STEPS, epochs=1, verbose=0).history
    assert history["critic/loss"][-1] < 0.1  # the critic has learned r(a)

    contexts = rng.normal(size=(1000, 2)).astype(np.float32)
    data_reward = reward(data["actions"]).mean()  # about -0.2
    summary = {}
    for k in (1, 2, 4, 8):
        actions = agent.act(contexts, euler_steps=k, seed=1).numpy()
        in_good = np.mean(np.abs(actions[:, 0] - 0.5) < 0.3)
        in_bad = np.mean(np.abs(actions[:, 0] + 0.5) < 0.3)
        summary[k] = (round(float(in_good), 3), round(float(in_bad), 3), round(float(reward(actions).mean()), 3))
    print("k: (good mode, bad mode, mean reward)", summary, "data reward", round(float(data_reward), 3))
    for k, (in_good, in_bad, mean_reward) in summary.items():
        # Every budget beats the data and is rarely in the bad mode. k = 8 (d = 3, the level flow
        # matching pins to the behaviour policy) improves slowest: ~0.68 in the good mode here.
        assert mean_reward > data_reward + 0.3, (k, summary)
        assert in_bad < 0.15, (k, summary)
    for k in (1, 2, 4):
        assert summary[k][0] > 0.85, (k, summary)  # nearly all in the good mode's support

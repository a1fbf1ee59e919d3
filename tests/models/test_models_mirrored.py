"""A MirroredStrategy step on two logical CPUs equals the single-device step on the same global batch,
with either update rule (models/config.py's update_rule).

Logical devices must be configured before TensorFlow initialises, so the comparison runs in a
fresh Python process. Each replica draws the global batch's random inputs from (seed, step) and
keeps its own rows, so both runs see the same noise, t, d and k; the losses are weighted by each
replica's share of the batch and gradients are clipped by the full-batch norm.
"""

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from models.config import AgentConfig
    from models.sorl import SORLAgent

    config = AgentConfig(  # antmaze-large's preset (q_agg=min) on small networks
        q_loss_coef=500.0, q_agg="min", actor_hidden_dims=(16, 16), critic_hidden_dims=(16, 16), batch_size=8,
        actor_lr=1e-2, critic_lr=1e-2, tau=0.1, grad_clip_norm=0.5, update_rule=sys.argv[1])
    rng = np.random.default_rng(0)
    rows = 24
    data = {
        "observations": rng.normal(size=(rows, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(rows, 2)).astype(np.float32),
        "next_observations": rng.normal(size=(rows, 4)).astype(np.float32),
        "rewards": -rng.integers(0, 2, size=rows).astype(np.float32),
        "masks": rng.integers(0, 2, size=rows).astype(np.float32),
        "terminals": np.zeros(rows, np.float32),
    }
    def dataset():  # global batches of 8, in order
        return tf.data.Dataset.from_tensor_slices(data).batch(8, drop_remainder=True).repeat()

    def run(agent):
        history = agent.fit(dataset(), steps_per_epoch=3, epochs=1, verbose=0).history
        state = {v.path: v.numpy() for v in agent.variables}
        for optimizer in (agent.actor_optimizer, agent.critic_optimizer, getattr(agent, "joint_optimizer", None)):
            if optimizer is None:
                continue
            state.update({optimizer.name + "/" + v.path: v.numpy() for v in optimizer.variables})
        return history, state

    single = SORLAgent(config, 4, 2)
    single.compile(jit_compile=False)
    single_history, single_state = run(single)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = SORLAgent(config, 4, 2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mirrored.compile(jit_compile=True)  # falls back to a plain graph with a warning
    mirrored_history, mirrored_state = run(mirrored)

    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "jit_warning": any("jit_compile=True is not supported" in str(w.message) for w in caught),
        "jit_compile": bool(mirrored.jit_compile),
        "variables": sorted(single_state),
        "mirrored_variables": sorted(mirrored_state),
        "max_abs_diff": {k: float(np.max(np.abs(single_state[k] - mirrored_state[k]))) for k in single_state},
        "max_abs_value": {k: float(np.max(np.abs(single_state[k]))) for k in single_state},
        "single_history": single_history,
        "mirrored_history": mirrored_history,
        "moved": float(np.max(np.abs(
            single_state["actor/dense_0/kernel"] - SORLAgent(config, 4, 2).actor.weights[0].numpy()))),
    }))
    """
)


@pytest.fixture(scope="module", params=["separate", "reference"])
def comparison(request):
    # `-c` in the repository root imports the checkout, as `python -m pytest` there does.
    result = subprocess.run([sys.executable, "-c", SCRIPT, request.param], capture_output=True, text=True,
                            timeout=600, cwd=str(REPO))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_replicas_update_like_one_device(comparison):
    assert comparison["replicas"] == 2
    assert comparison["variables"] == comparison["mirrored_variables"]
    assert comparison["moved"] > 1e-3  # training changed the weights, so equality means something
    for name, diff in comparison["max_abs_diff"].items():
        assert diff <= 1e-5 + 1e-4 * comparison["max_abs_value"][name], (name, diff)


def test_two_replicas_report_the_same_metrics(comparison):
    single, mirrored = comparison["single_history"], comparison["mirrored_history"]
    assert set(single) == set(mirrored)
    for name in single:
        assert mirrored[name][-1] == pytest.approx(single[name][-1], rel=1e-4, abs=1e-6), name


def test_xla_request_falls_back_with_a_warning_for_several_replicas(comparison):
    assert comparison["jit_warning"] and not comparison["jit_compile"]

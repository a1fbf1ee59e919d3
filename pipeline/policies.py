"""Evaluation policies over a trained agent or an exported SavedModel.

Every policy maps observations [n, obs_dim] float32 to actions [n, A] numpy, traced once for any
batch size. Row-seeded ones (`row_seeded = True`) also take per-row noise seeds [n] int64 and draw
row i's noise from seeds[i] alone (models.noise.row_seeded_noise, as the export's `_seeded`
signatures do), so a checkpoint and its export evaluate to the same numbers and batching does not
change an episode. pipeline/rollouts.py passes the seeds.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from models import adaptive
from models.noise import row_seeded_noise


class RowSeededPolicy:
    """observations [n, obs_dim], seeds [n] int64 -> actions [n, A] (numpy), over a TF function
    `act(observations, seeds)` returning actions (or a dict with "actions")."""

    row_seeded = True

    def __init__(self, act, name: str):
        self._act = act
        self.name = name

    def __call__(self, observations, seeds) -> np.ndarray:
        out = self._act(tf.convert_to_tensor(np.asarray(observations, np.float32)),
                        tf.convert_to_tensor(np.asarray(seeds, np.int64)))
        return self._handle(out)

    def _handle(self, out):
        if isinstance(out, dict):
            out = out["actions"]
        return out.numpy()

    def __repr__(self):
        return f"{type(self).__name__}({self.name})"


class AdaptivePolicy(RowSeededPolicy):
    """The adaptive-budget policy (models/adaptive.py). Also records the Euler steps it spends on
    every action, so the grid can report mean steps and network evaluations per action (`cost()`)."""

    def __init__(self, act, name: str, max_euler_steps: int):
        super().__init__(act, name)
        self.max_euler_steps = int(max_euler_steps)
        self.reset_cost()

    def reset_cost(self) -> None:
        self.steps_used: list = []

    def _handle(self, out):
        actions, steps_used = (out["actions"], out["steps_used"]) if isinstance(out, dict) else out
        self.steps_used.append(np.asarray(steps_used).reshape(-1))
        return actions.numpy()

    def cost(self) -> dict:
        """Means over every action since `reset_cost()`: Euler steps of the action, actor and critic calls."""
        steps = np.concatenate(self.steps_used) if self.steps_used else np.zeros(0, np.int64)
        if steps.size == 0:
            return dict(mean_steps=math.nan, actor_calls=math.nan, critic_calls=math.nan)
        return dict(
            mean_steps=float(steps.mean()),
            actor_calls=float(adaptive.actor_evaluations(steps, self.max_euler_steps).mean()),
            critic_calls=float(adaptive.critic_evaluations(steps, self.max_euler_steps).mean()),
        )


class UnseededPolicy:
    """A SavedModel signature without a seed input: fresh noise on every call (not reproducible)."""

    row_seeded = False

    def __init__(self, fn, name, model=None):
        self._fn = fn
        self.name = name
        self.model = model  # keeps the loaded SavedModel (and its variables) alive

    def __call__(self, observations):
        return self._fn(observations=tf.convert_to_tensor(np.asarray(observations, np.float32)))["actions"].numpy()


def _input_signature(agent):
    return [tf.TensorSpec([None, int(agent.obs_dim)], tf.float32), tf.TensorSpec([None], tf.int64)]


def make_agent_policy(agent, euler_steps: int, num_samples: int = 1, cap_step_level: bool = False) -> RowSeededPolicy:
    """A fast policy over `agent.act(observations, euler_steps, num_samples, noise, cap_step_level)`:
    traced once (any batch size) and reading the agent's current weights at every call, so
    training-time evaluation follows training without re-tracing."""
    euler_steps, num_samples, cap_step_level = int(euler_steps), int(num_samples), bool(cap_step_level)
    action_dim = int(agent.action_dim)

    @tf.function(input_signature=_input_signature(agent))
    def act(observations, seeds):
        noise = row_seeded_noise(seeds, num_samples, action_dim)
        return agent.act(observations, euler_steps=euler_steps, num_samples=num_samples, noise=noise,
                         cap_step_level=cap_step_level)

    capped = " capped" if cap_step_level else ""
    return RowSeededPolicy(act, f"agent k={euler_steps} N={num_samples}{capped}")


def make_adaptive_policy(agent, max_euler_steps: int = 8, threshold: float = 0.0,
                         compare: str = "across_levels") -> AdaptivePolicy:
    """The adaptive-budget policy over a trained agent, traced once (noise as make_agent_policy's);
    `compare`: the rule's critic inputs (models.adaptive.adaptive_act)."""
    action_dim = int(agent.action_dim)
    adaptive.check_compare(compare)

    @tf.function(input_signature=_input_signature(agent))
    def act(observations, seeds):
        noise = row_seeded_noise(seeds, 1, action_dim)
        return adaptive.adaptive_act(agent, observations, noise=noise, max_euler_steps=max_euler_steps,
                                     threshold=threshold, compare=compare)

    rule = "" if compare == "across_levels" else f" {compare}"
    return AdaptivePolicy(act, f"adaptive k<={max_euler_steps} thr={threshold:g}{rule}", max_euler_steps)


def load_saved_model(saved_model_dir):
    return tf.saved_model.load(str(saved_model_dir))


def make_saved_model_policy(saved_model_dir, signature: str = "serving_default", loaded=None,
                            max_euler_steps: Optional[int] = None):
    """A policy over one signature of an exported SavedModel (serving/export.py).

    Uses the signature's `_seeded` twin when there is one (input `seed` [batch] int64, one per row),
    so the evaluation is reproducible and equals the checkpoint's; otherwise the signature as it
    is, with fresh noise per call. A signature with a `steps_used` output is the adaptive policy
    (`max_euler_steps`: its cap, for the cost accounting). `loaded`: the already loaded SavedModel.
    ValueError when the model has no such signature.
    """
    from serving.signatures import loaded_function  # reads a loaded signature; no noise from serving

    model = loaded if loaded is not None else load_saved_model(saved_model_dir)
    available = sorted(model.signatures.keys())
    if signature not in model.signatures and f"{signature}_seeded" not in model.signatures:
        raise ValueError(
            f"{saved_model_dir}: no signature {signature!r}; it has {available}. Export the budgets "
            "you want to evaluate (serving/export.py --budgets/--best_of), or evaluate the run's "
            "checkpoint with --workdir (any budget)."
        )
    seeded_name = signature if signature.endswith("_seeded") else f"{signature}_seeded"
    name = f"{saved_model_dir}:{signature}"
    if seeded_name not in model.signatures:
        return UnseededPolicy(loaded_function(model, signature), name, model=model)

    fn = loaded_function(model, seeded_name)

    def act(observations, seeds):
        return fn(observations=observations, seed=seeds)

    act.model = model  # keeps the loaded object (and its variables) alive
    if "steps_used" in fn.structured_outputs:
        return AdaptivePolicy(act, name, max_euler_steps=max_euler_steps or 8)
    return RowSeededPolicy(act, name)

"""TF-Agents policies over one signature of an exported SORL SavedModel.

    env = GymnasiumPyEnvironment(ogbench_env, seed=0)
    policy = SavedModelPyPolicy("RUN/export", signature="act_k4", seed=0)
    PyDriver(env, policy, observers=[AverageReturnMetric()], max_episodes=1).run(env.reset())

`SavedModelPyPolicy` (numpy in, numpy out: PyDriver) and `SavedModelTFPolicy` (tensors:
TFPyEnvironment with TF-Agents' TF drivers) call the exported signature itself, so the actions are
the SavedModel's (serving/signatures.py): `observations` [B, obs_dim] float32 -> `actions` [B, A]
in [-1, 1]. Any budget works: `act_k1` ... `act_k8`, `act_k4_best_of_8`, `serving_default`.

Noise. Without a seed the signature draws fresh noise on every call. With `seed=S` the policy
calls the signature's `_seeded` twin, whose row i depends only on its seed input, and feeds it
S, S+1, S+2, ... one per row in call order: the t-th call of an unbatched run is
`signature_seeded(observations=[o_t], seed=[S + t])`, so a run can be replayed exactly. (TF-Agents'
drivers also call the policy on an episode's last time step and discard that action, so each
episode after the first starts one seed further than the previous episode's length.)

`SavedModelTFPolicy` can be saved again with TF-Agents' `PolicySaver` (and loaded with its
`SavedModelPyTFEagerPolicy`); its `distribution()` raises: the policy has no closed form.
"""

import numpy as np
import tensorflow as tf

from interop.tf_agents.compat import import_tf_agents
from serving.versions import resolve_saved_model_dir

import_tf_agents()
from tf_agents.policies import py_policy, tf_policy  # noqa: E402
from tf_agents.specs import array_spec, tensor_spec  # noqa: E402
from tf_agents.trajectories import policy_step  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

SEEDED_SUFFIX = "_seeded"
SEED_INPUT = "seed"


class SavedModelSignature(tf.Module):
    """One signature of a loaded SORL SavedModel, chosen for seeded or unseeded calls.

    Attributes: `path` (the version folder), `signature_name` (the one called: the `_seeded`
    twin when seeded), `seeded`, `obs_dim`, `action_dim`. A tf.Module, so that a policy holding
    it tracks the SavedModel's variables (tf_agents' PolicySaver can then save the policy).
    """

    def __init__(self, path: str, signature: str = "serving_default", seeded: bool = False):
        super().__init__(name="saved_model_signature")
        self.path = resolve_saved_model_dir(path)
        self._loaded = tf.saved_model.load(self.path)  # keep: the functions use its variables
        available = sorted(self._loaded.signatures.keys())
        name = signature
        if seeded and not signature.endswith(SEEDED_SUFFIX):
            name = signature + SEEDED_SUFFIX
        if name not in available:
            seeded_names = [n for n in available if n.endswith(SEEDED_SUFFIX)]
            hint = (f"seeded signatures: {', '.join(seeded_names)} (serving_default's twin is "
                    f"act_k<default k>_seeded)" if seeded else f"signatures: {', '.join(available)}")
            raise ValueError(f"{self.path}: no signature {name!r}; {hint}")
        self.signature_name = name
        self.function = self._loaded.signatures[name]
        inputs = self.function.structured_input_signature[1]
        self.seeded = SEED_INPUT in inputs
        if self.seeded and not seeded:
            raise ValueError(
                f"{self.path}: signature {name!r} takes a seed input; pass seed=... to the policy, "
                f"or choose {name.removesuffix(SEEDED_SUFFIX)!r} for fresh noise"
            )
        if seeded and not self.seeded:
            raise ValueError(f"{self.path}: signature {name!r} has no {SEED_INPUT!r} input; "
                             f"export with serving/export.py, which writes the _seeded twins")
        self.obs_dim = int(inputs["observations"].shape[-1])
        self.action_dim = int(self.function.structured_outputs["actions"].shape[-1])

    def __call__(self, observations, seeds=None):
        """actions [B, A] for observations [B, obs_dim] (and seeds [B] int64 when seeded)."""
        inputs = {"observations": tf.convert_to_tensor(observations, tf.float32)}
        if self.seeded:
            inputs[SEED_INPUT] = tf.convert_to_tensor(seeds, tf.int64)
        return self.function(**inputs)["actions"]


def _check_observation_spec(observation_spec, obs_dim, path):
    if observation_spec is not None and tuple(observation_spec.shape) != (obs_dim,):
        raise ValueError(
            f"{path}: the SavedModel takes observations [{obs_dim}], the environment's observation "
            f"spec is {observation_spec}; use the export trained on this environment"
        )


class SavedModelPyPolicy(py_policy.PyPolicy):
    """A PyPolicy (numpy) over one signature of a SORL SavedModel.

    Args:
      saved_model_path: a SavedModel folder, or a model base path (its newest version is used).
      signature: the budget to act with, e.g. "act_k4", "act_k8_best_of_16", "serving_default".
      seed: None for fresh noise per call; an int S to use the `_seeded` twin with seeds S, S+1,
        ... one per observation row in call order (the module docstring says how to replay).
        `action(..., seed=s)` on a seeded policy uses s, s+1, ... for that call only.
      observation_spec: optional, the environment's observation ArraySpec (its shape is checked
        and it becomes the policy's, so specs match the environment's exactly).
    """

    def __init__(self, saved_model_path, signature="serving_default", seed=None,
                 observation_spec=None):
        self.signature = SavedModelSignature(saved_model_path, signature, seeded=seed is not None)
        obs_dim, action_dim = self.signature.obs_dim, self.signature.action_dim
        _check_observation_spec(observation_spec, obs_dim, self.signature.path)
        if observation_spec is None:
            observation_spec = array_spec.ArraySpec((obs_dim,), np.float32, "observation")
        action_spec = array_spec.BoundedArraySpec((action_dim,), np.float32, -1.0, 1.0, "action")
        super().__init__(ts.time_step_spec(observation_spec), action_spec)
        self._next_seed = seed

    def _take_seeds(self, count, seed):
        if seed is not None:  # an explicit seed for this call does not advance the sequence
            return np.int64(seed) + np.arange(count, dtype=np.int64)
        seeds = np.int64(self._next_seed) + np.arange(count, dtype=np.int64)
        self._next_seed += count
        return seeds

    def _action(self, time_step, policy_state, seed=None):
        observations = np.asarray(time_step.observation, np.float32)
        unbatched = observations.ndim == 1  # PyDriver over an unbatched PyEnvironment
        if unbatched:
            observations = observations[None]
        seeds = None
        if self.signature.seeded:
            seeds = self._take_seeds(len(observations), seed)
        actions = self.signature(observations, seeds).numpy()
        return policy_step.PolicyStep(actions[0] if unbatched else actions, policy_state, ())


class SavedModelTFPolicy(tf_policy.TFPolicy):
    """A TFPolicy (batched tensors) over one signature of a SORL SavedModel.

    Same arguments as `SavedModelPyPolicy`, with `observation_spec` a TensorSpec. The seed
    sequence lives in a tf.Variable, so it advances inside tf.function drivers too.
    """

    def __init__(self, saved_model_path, signature="serving_default", seed=None,
                 observation_spec=None, name=None):
        self.signature = SavedModelSignature(saved_model_path, signature, seeded=seed is not None)
        obs_dim, action_dim = self.signature.obs_dim, self.signature.action_dim
        _check_observation_spec(observation_spec, obs_dim, self.signature.path)
        if observation_spec is None:
            observation_spec = tensor_spec.TensorSpec((obs_dim,), tf.float32, "observation")
        action_spec = tensor_spec.BoundedTensorSpec((action_dim,), tf.float32, -1.0, 1.0, "action")
        # clip=False: the SavedModel's actions are already in [-1, 1] and are returned untouched.
        super().__init__(ts.time_step_spec(observation_spec), action_spec, clip=False, name=name)
        self._next_seed = tf.Variable(seed if seed is not None else 0, dtype=tf.int64,
                                      trainable=False, name="next_seed")

    def _variables(self):
        return [self._next_seed]

    def _action(self, time_step, policy_state, seed=None):
        observations = tf.cast(time_step.observation, tf.float32)
        seeds = None
        if self.signature.seeded:
            count = tf.shape(observations, out_type=tf.int64)[0]
            if seed is not None:  # an explicit seed for this call does not advance the sequence
                seeds = tf.cast(seed, tf.int64) + tf.range(count, dtype=tf.int64)
            else:
                # One op advances the counter and returns the new value, so no separate read
                # can be ordered before or after it in a traced (or saved and restored) function.
                first = self._next_seed.assign_add(count, read_value=True) - count
                seeds = first + tf.range(count, dtype=tf.int64)
        actions = self.signature(observations, seeds)
        return policy_step.PolicyStep(actions, policy_state, ())

    def _distribution(self, time_step, policy_state):
        raise NotImplementedError(
            "a SORL policy is a deterministic map from (observation, noise) to an action through "
            "k Euler steps; it has no closed-form distribution: use action()"
        )

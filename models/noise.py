"""Every seed and every noise draw of the project: where each random number comes from.

- The agent's streams: an update's random inputs, a validation step's, and act()'s own noise are
  stateless draws keyed by [seed * NUM_STREAMS + stream, counter] (stream_key); the counters are
  checkpointed variables of the agent, so a restored agent continues the same stream.
- Row-seeded noise (row_seeded_noise): row i depends on seeds[i] alone. The exported `_seeded`
  signatures and evaluation use it, so a checkpoint and its export give the same numbers and
  batching never changes a row.
- Fresh noise (fresh_noise, NoiseStream): new on every call and in every process, for the
  exported signatures without a seed input.
- Evaluation seeds (episode_seed, idle_seed, noise_seeds): numpy integer hashes of (seed,
  episode, step), so an episode's reset and noise never depend on which episodes share a batch.
"""

import uuid
from typing import Optional

import numpy as np
import tensorflow as tf

# The agent's independent streams: stream_key(seed, stream, counter) keys one stateless draw.
TRAIN_STREAM, EVAL_STREAM, ACT_STREAM = 0, 1, 2
NUM_STREAMS = 3
# Second word of a stateless seed pair drawn from one user seed; any fixed values work, but
# changing one changes every seeded answer (exports, evaluations) made before.
SEED_SALT = 0x5E2F  # row_seeded_noise
ACT_SEED_WORD = -1  # act(seed=...): never a counter value, so it never replays the act stream
ADAPTIVE_SEED_WORD = 0x5EED  # adaptive_act(seed=...)


def stream_key(seed: int, stream: int, counter) -> tf.Tensor:
    """[2] int64 stateless seed of draw number `counter` of the agent's stream `stream`."""
    return tf.stack([tf.constant(int(seed) * NUM_STREAMS + int(stream), tf.int64),
                     tf.cast(tf.convert_to_tensor(counter), tf.int64)])


def seeded_normal(shape, seed, word: int) -> tf.Tensor:
    """Standard normal noise of `shape` from the user seed `seed` (int scalar), salted by `word`."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.constant(word, tf.int64)])
    return tf.random.stateless_normal(shape, seed=key)


def row_seeded_noise(seeds, num_samples: int, action_dim: int) -> tf.Tensor:
    """[batch, N, A] noise where row i depends only on seeds[i] (int64 [batch])."""
    def row_noise(seed):
        return seeded_normal([num_samples, action_dim], seed, SEED_SALT)

    return tf.map_fn(row_noise, tf.cast(seeds, tf.int64),
                     fn_output_signature=tf.TensorSpec([num_samples, action_dim], tf.float32))


class NoiseStream(tf.saved_model.experimental.TrackableResource):
    """Noise for XLA-compiled signatures without a seed: an int64 [key, counter] resource variable.

    The key is drawn from the OS when the resource is initialised, which a SavedModel does on
    every load (it is a resource, like a lookup table, not a checkpointed variable: TF Serving
    runs its initialiser with the model's init op, `tf.saved_model.load` when it restores); each
    call reads [key, counter] as the seed of a stateless draw and adds 1 to the counter. In an
    XLA launch the read and the add are one compiled update of the variable, so concurrent calls
    never share noise; outside XLA they would be two ops that concurrent calls could interleave,
    which is why fresh_noise uses TF's own sampler there. A loaded SavedModel restores it as a
    generic resource (no registered name), so exports do not depend on where this class lives.
    The resource is not destroyed with this object (16 bytes), so a concrete function kept
    without its tf.function keeps working.
    """

    def __init__(self):
        super().__init__()
        self._initialize()  # in eager mode this runs now; a loaded SavedModel runs it on load

    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.int64, shape=[2],
                                      shared_name=f"sorl_noise_stream_{uuid.uuid4().hex}")

    def _initialize(self):
        key = tf.raw_ops.RandomUniformInt(shape=tf.constant([], tf.int32), minval=tf.constant(0, tf.int64),
                                          maxval=tf.constant(2**62, tf.int64), seed=0, seed2=0)
        return tf.raw_ops.AssignVariableOp(resource=self.resource_handle,
                                           value=tf.stack([key, tf.constant(0, tf.int64)]))

    def noise(self, batch, num_samples: int, action_dim: int):
        """[batch, N, A] standard normal noise, new on every call (see the class docstring)."""
        state = tf.raw_ops.ReadVariableOp(resource=self.resource_handle, dtype=tf.int64)
        tf.raw_ops.AssignAddVariableOp(resource=self.resource_handle,
                                       value=tf.constant([0, 1], tf.int64))
        return tf.random.stateless_normal(tf.stack([batch, num_samples, action_dim]), seed=state)


def new_noise_stream(jit_compile: bool) -> Optional[NoiseStream]:
    """What an export's unseeded signatures draw from: a NoiseStream when they are XLA-compiled,
    None (TF's own OS-seeded sampler, see fresh_noise) otherwise."""
    return NoiseStream() if jit_compile else None


def fresh_noise(batch, num_samples: int, action_dim: int, noise_stream: Optional[NoiseStream],
                compiled: bool):
    """[batch, N, A] standard normal noise, different on every call and in every process.

    compiled (inside an XLA function): from `noise_stream`. Otherwise TF's stateful sampler with
    seed = seed2 = 0, which seeds itself from the OS when its kernel is made (once per load, even
    if the exporting process had set a global seed) and advances under a lock on every call.
    """
    if compiled:
        return noise_stream.noise(batch, num_samples, action_dim)
    shape = tf.stack([batch, num_samples, action_dim])
    return tf.raw_ops.RandomStandardNormal(shape=shape, dtype=tf.float32, seed=0, seed2=0)


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of episode `episode` of an evaluation seeded `seed` (independent of num_envs)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5E7A1, int(episode)]).generate_state(1)[0])


def idle_seed(seed: int, slot: int) -> int:
    """The reset seed of vector-env slot `slot` once it has no episode left to run."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x1D1E, int(slot)]).generate_state(1)[0])


def noise_seeds(seed: int, episodes, steps) -> np.ndarray:
    """Per-row noise seeds [n] int64 (non-negative) for rows at (episode, step) of an evaluation
    seeded `seed`: a fixed integer hash (splitmix64 finaliser), so an episode's noise never depends
    on which other episodes share its batch."""
    with np.errstate(over="ignore"):
        x = (np.uint64(int(seed) & 0xFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.asarray(episodes, np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             ^ np.asarray(steps, np.uint64) * np.uint64(0x94D049BB133111EB))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(1)).astype(np.int64)

"""The two SORL networks (SPEC section 2): the shortcut actor v(s, x, t, d) and the critic ensemble Q(s, a, k).

Both build their weights in the constructor (they know their input sizes), so a freshly constructed
network can load weights, and `from_config(get_config())` rebuilds an identical architecture.
Kernels are Glorot-uniform and biases zero; `seed` makes the initialisation reproducible.
"""

import math
from typing import Optional, Sequence

import keras
import tensorflow as tf

LAYER_NORM_EPSILON = 1e-6  # flax's default, which the reference implementation uses


def gelu(x):
    """tanh-approximated GELU (flax's default `nn.gelu`, used by the reference code)."""
    return keras.activations.gelu(x, approximate=True)


def _seed(seed: Optional[int], offset: int) -> Optional[int]:
    return None if seed is None else int(seed) * 1000 + offset


def _column(values, dtype=tf.float32):
    """[B] or [B, 1] -> [B, 1] float32 (t, d and k enter the networks as raw scalar features)."""
    return tf.reshape(tf.cast(values, dtype), (-1, 1))


class _ConcatMLP(keras.Model):
    """What both networks share: an MLP over concatenated input features, GELU after every hidden
    layer (optionally LayerNorm after it), its sizes and seed as config. Subclasses build the layers
    (`_build_layers`) and concatenate their inputs before `_mlp`."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int], layer_norm: bool,
                 seed: Optional[int], **kwargs):
        super().__init__(**kwargs)
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.layer_norm = bool(layer_norm)
        self.seed = seed

    def _build(self):
        with keras.name_scope(self.name):  # variable paths "<network>/dense_0/kernel", ...
            self._build_layers()
        self.built = True

    def _mlp(self, h):
        for i, dense in enumerate(self.hidden_layers):
            h = gelu(dense(h))
            if self.layer_norm:
                h = self.norm_layers[i](h)
        return self.output_layer(h)

    def get_config(self):
        config = super().get_config()
        config.update(
            obs_dim=self.obs_dim,
            action_dim=self.action_dim,
            hidden_dims=list(self.hidden_dims),
            layer_norm=self.layer_norm,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="sorl")
class ShortcutActor(_ConcatMLP):
    """Velocity network v(s, x, t, d) of a shortcut model.

    Inputs: observations [B, obs_dim], noisy actions x [B, action_dim], time t [B] in [0, 1),
    step level d = log2(1/h) [B] (float). Output: velocity [B, action_dim].
    Body: MLP over concat(s, x, t, d), GELU after every hidden layer (optionally LayerNorm after it).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: Sequence[int] = (512, 512, 512, 512),
        layer_norm: bool = False,
        seed: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(obs_dim, action_dim, hidden_dims, layer_norm, seed, **kwargs)
        self._build()

    def _build_layers(self):
        seed = self.seed
        input_dim = self.obs_dim + self.action_dim + 2  # + t + d
        hidden_layers, norm_layers = [], []
        for i, width in enumerate(self.hidden_dims):
            dense = keras.layers.Dense(
                width, kernel_initializer=keras.initializers.GlorotUniform(seed=_seed(seed, i)), name=f"dense_{i}"
            )
            dense.build((None, input_dim))
            hidden_layers.append(dense)
            if self.layer_norm:
                norm = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"layer_norm_{i}")
                norm.build((None, width))
                norm_layers.append(norm)
            input_dim = width
        # Tuples, not lists: tf.train.Checkpoint tracks a Keras layer's tuple attributes but not its lists.
        self.hidden_layers, self.norm_layers = tuple(hidden_layers), tuple(norm_layers)
        self.output_layer = keras.layers.Dense(
            self.action_dim,
            kernel_initializer=keras.initializers.GlorotUniform(seed=_seed(seed, len(self.hidden_dims))),
            name="velocity",
        )
        self.output_layer.build((None, input_dim))

    def call(self, observations, noisy_actions, times, step_levels):
        return self._mlp(tf.concat([observations, noisy_actions, _column(times), _column(step_levels)], axis=-1))


@keras.saving.register_keras_serializable(package="sorl")
class EnsembleDense(keras.layers.Layer):
    """`num_members` independent dense layers evaluated as one batched matmul.

    Kernel [M, in, units], bias [M, units]; each member's kernel is Glorot-uniform for its own
    (in, units) fan. Input [B, in] (shared by all members) or [M, B, in]; output [M, B, units].
    """

    def __init__(self, units: int, num_members: int, seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.num_members = int(num_members)
        self.seed = seed

    def build(self, input_shape):
        input_dim = int(input_shape[-1])
        limit = math.sqrt(6.0 / (input_dim + self.units))  # Glorot uniform per member
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.num_members, input_dim, self.units),
            initializer=keras.initializers.RandomUniform(-limit, limit, seed=self.seed),
        )
        self.bias = self.add_weight(name="bias", shape=(self.num_members, self.units), initializer="zeros")
        self.built = True

    def call(self, inputs):
        if len(inputs.shape) == 2:
            outputs = tf.einsum("bi,mio->mbo", inputs, self.kernel)
        else:
            outputs = tf.einsum("mbi,mio->mbo", inputs, self.kernel)
        return outputs + self.bias[:, None, :]

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, num_members=self.num_members, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="sorl")
class EnsembleLayerNorm(keras.layers.Layer):
    """LayerNorm over the last axis of [M, B, units] with a separate scale and offset per member."""

    def __init__(self, num_members: int, epsilon: float = LAYER_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.num_members = int(num_members)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        units = int(input_shape[-1])
        self.scale = self.add_weight(name="scale", shape=(self.num_members, units), initializer="ones")
        self.offset = self.add_weight(name="offset", shape=(self.num_members, units), initializer="zeros")
        self.built = True

    def call(self, inputs):
        mean, variance = tf.nn.moments(inputs, axes=[-1], keepdims=True)
        normalised = (inputs - mean) * tf.math.rsqrt(variance + self.epsilon)
        return normalised * self.scale[:, None, :] + self.offset[:, None, :]

    def get_config(self):
        config = super().get_config()
        config.update(num_members=self.num_members, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="sorl")
class CriticEnsemble(_ConcatMLP):
    """Q(s, a, k): `num_members` independent MLP critics, weights stacked per layer.

    Inputs: observations [B, obs_dim], actions [B, action_dim], k = number of Euler steps that
    produced the action [B] (float). Output: Q-values [num_members, B].
    Each member: MLP over concat(s, a, k), GELU after every hidden layer, then LayerNorm.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: Sequence[int] = (512, 512, 512, 512),
        num_members: int = 2,
        layer_norm: bool = True,
        seed: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(obs_dim, action_dim, hidden_dims, layer_norm, seed, **kwargs)
        self.num_members = int(num_members)
        self._build()

    def _build_layers(self):
        seed = self.seed
        input_dim = self.obs_dim + self.action_dim + 1  # + k
        hidden_layers, norm_layers = [], []
        for i, width in enumerate(self.hidden_dims):
            dense = EnsembleDense(width, self.num_members, seed=_seed(seed, 500 + i), name=f"dense_{i}")
            dense.build((None, input_dim))
            hidden_layers.append(dense)
            if self.layer_norm:
                norm = EnsembleLayerNorm(self.num_members, name=f"layer_norm_{i}")
                norm.build((self.num_members, None, width))
                norm_layers.append(norm)
            input_dim = width
        self.hidden_layers, self.norm_layers = tuple(hidden_layers), tuple(norm_layers)  # tuples: see ShortcutActor
        self.output_layer = EnsembleDense(
            1, self.num_members, seed=_seed(seed, 500 + len(self.hidden_dims)), name="value"
        )
        self.output_layer.build((self.num_members, None, input_dim))

    def call(self, observations, actions, steps):
        return tf.squeeze(self._mlp(tf.concat([observations, actions, _column(steps)], axis=-1)), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(num_members=self.num_members)
        return config


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """target's weights <- source's (same architecture); used to start target networks equal."""
    for s, t in zip(source.weights, target.weights):
        t.assign(s)

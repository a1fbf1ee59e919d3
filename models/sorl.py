"""The SORL agent as a Keras model: networks, optimizers, one-stage training step, and the policy.

    with strategy.scope():                          # optional (tf.distribute.MirroredStrategy)
        agent = SORLAgent(agent_config, obs_dim, action_dim, env_units)   # models.config.AgentConfig
        agent.compile(jit_compile=True)
    agent.fit(dataset, steps_per_epoch=..., epochs=...)   # dataset: data.reader.make_dataset(...)
    actions = agent.act(observations, euler_steps=4, num_samples=1)   # raw observations -> env units

Units (models/units.py): the networks learn [-1, 1] actions and, with config.normalize_observations,
standardised observations; `act`, `q_values` and the policies take raw observations and env-unit
actions, through `env_units` (identity without action bounds and statistics, e.g. OGBench).
Rewards are multiplied by config.reward_scale inside the update.

One update (SPEC section 3): a critic step (own Adam), then an actor step (own Adam) on
L_actor = fm_coef * L_FM + sc_coef * L_SC + q_loss_coef * L_Q using the updated critic, then both
targets move by EMA with the post-update weights. Each optimizer clips by the global norm of the
full-batch gradient. config.update_rule='reference' replaces this with the authors' JAX update (see
SORLAgent._reference_steps), for ablations against their code.

Randomness: every random input of an update is a pure function of (config.seed, step counter,
global row index) - see `losses.draw_loss_inputs` and the stream keys of models/noise.py. Each replica draws the global batch's inputs and
keeps its own rows, so a distributed step equals the single-device step on the same global batch.
The counters are checkpointed variables, so a restored agent continues the same random stream.
(XLA lowers the stateless random ops differently from TensorFlow's kernels, so a run compiled with
XLA draws other numbers than the same run without it: reproducible within one mode, not across.)
"""

import functools
import math
import warnings
from typing import Mapping, Optional

import keras
import numpy as np
import tensorflow as tf

from models import losses, networks, noise as noise_lib, sampling
from models.config import AgentConfig, agent_config_from_dict, agent_config_to_dict
from models.units import EnvUnits

METRIC_NAMES = (
    "critic/loss",
    "critic/q_mean",
    "critic/grad_norm",
    "actor/loss",
    "actor/fm_loss",
    "actor/sc_loss",
    "actor/q_loss",
    "actor/q_mean",
    "actor/k",
    "actor/grad_norm",
)

def _replica_context() -> tf.distribute.ReplicaContext:
    context = tf.distribute.get_replica_context()
    if context is None:
        raise RuntimeError(
            "SORLAgent.train_step/test_step/update must run in a replica context: call them through "
            "agent.fit/evaluate or strategy.run, not directly in a strategy's cross-replica scope."
        )
    return context


def _log2_index(euler_steps):
    """Index of a power-of-two Euler step count in sampling.step_counts: 1 -> 0, 2 -> 1, 4 -> 2, 8 -> 3."""
    return tf.cast(tf.round(tf.math.log(tf.cast(euler_steps, tf.float32)) / math.log(2.0)), tf.int32)


def _clip_scale(global_norm, clip_norm: float):
    """Factor that brings a gradient of norm `global_norm` down to at most `clip_norm` (1 if clip_norm <= 0)."""
    if clip_norm <= 0:
        return tf.constant(1.0)
    return clip_norm / tf.maximum(global_norm, clip_norm)


def _apply_if_finite(optimizer, grads, variables, finite) -> None:
    """optimizer.apply(grads) when `finite`; otherwise weights and optimizer state stay untouched.

    The branch runs in cross-replica context because a tf.cond in replica context may not contain
    the optimizer's synchronisation point (Keras' LossScaleOptimizer skips steps the same way).
    """

    def cross_replica_apply(strategy, grads, finite):
        finite = strategy.experimental_local_results(finite)[0]  # equal on every replica

        def apply():
            strategy.extended.call_for_each_replica(lambda g: optimizer.apply(g, variables), args=(grads,))
            return tf.constant(True)

        return tf.cond(finite, apply, lambda: tf.constant(False))

    tf.distribute.get_replica_context().merge_call(cross_replica_apply, args=(grads, finite))


def _ema_update(targets, sources, tau: float) -> None:
    """target <- tau * source + (1 - tau) * target for each pair, on every replica's copy."""
    target_vars = [v.value for v in targets]
    source_vars = [v.value for v in sources]

    def cross_replica_update(strategy):
        for target, source in zip(target_vars, source_vars):
            strategy.extended.update(
                target, lambda t, s: t.assign(tau * s + (1.0 - tau) * t), args=(source,), group=False
            )

    tf.distribute.get_replica_context().merge_call(cross_replica_update)


@keras.saving.register_keras_serializable(package="sorl")
class SORLAgent(keras.Model):
    """SORL: shortcut-model actor + critic ensemble, with target copies and one Adam each.

    Attributes: actor, target_actor (ShortcutActor), critic, target_critic (CriticEnsemble),
    actor_optimizer, critic_optimizer (Adam), training_steps (int64: updates done; the training
    random stream's counter), evaluation_draws and act_draws (counters of the other streams).
    `tf.train.Checkpoint(agent=agent)` saves and restores all of them. `env_units` (models/units.py,
    constants, not variables) maps actions to the env's bounds and standardises observations; it
    must hold observation statistics when config.normalize_observations is set.
    """

    def __init__(self, config: AgentConfig, obs_dim: int, action_dim: int, env_units: Optional[EnvUnits] = None,
                 **kwargs):
        kwargs.setdefault("name", "sorl_agent")
        super().__init__(**kwargs)
        self.config = config
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        env_units = env_units or EnvUnits()
        if config.normalize_observations != env_units.normalizes_observations:
            raise ValueError(
                f"SORLAgent: normalize_observations={config.normalize_observations} but env_units "
                f"{'has' if env_units.normalizes_observations else 'has no'} observation statistics; build the "
                "units with EnvUnits.from_run_dataset(..., normalize_observations=config.normalize_observations).")
        for name, values, size in (("action_low", env_units.action_low, self.action_dim),
                                   ("action_high", env_units.action_high, self.action_dim),
                                   ("observation_mean", env_units.observation_mean, self.obs_dim),
                                   ("observation_std", env_units.observation_std, self.obs_dim)):
            if values is not None and len(values) != size:
                raise ValueError(f"SORLAgent: env_units.{name} has {len(values)} values; expected {size}.")
        self.env_units = env_units

        def make_actor(name):
            return networks.ShortcutActor(
                obs_dim, action_dim, config.actor_hidden_dims, config.actor_layer_norm, seed=config.seed, name=name
            )

        def make_critic(name):
            return networks.CriticEnsemble(
                obs_dim,
                action_dim,
                config.critic_hidden_dims,
                config.num_critics,
                config.critic_layer_norm,
                seed=config.seed + 1,
                name=name,
            )

        self.actor = make_actor("actor")
        self.critic = make_critic("critic")
        self.target_actor = make_actor("target_actor")
        self.target_critic = make_critic("target_critic")
        for online, target in ((self.actor, self.target_actor), (self.critic, self.target_critic)):
            target.trainable = False
            networks.copy_weights(online, target)

        # Clipping is done here on the full-batch gradient (see _step), not by Keras per replica.
        self.actor_optimizer = keras.optimizers.Adam(
            learning_rate=config.actor_lr, beta_1=config.adam_beta_1, beta_2=config.adam_beta_2, name="actor_adam"
        )
        self.critic_optimizer = keras.optimizers.Adam(
            learning_rate=config.critic_lr, beta_1=config.adam_beta_1, beta_2=config.adam_beta_2, name="critic_adam"
        )
        self.actor_optimizer.build(self.actor.trainable_variables)
        self.critic_optimizer.build(self.critic.trainable_variables)
        if config.update_rule == "reference":
            # optax's Adam epsilon; the snapshots hold the weights from before this update.
            self.joint_optimizer = keras.optimizers.Adam(
                learning_rate=config.critic_lr, beta_1=config.adam_beta_1, beta_2=config.adam_beta_2,
                epsilon=1e-8, name="joint_adam",
            )
            self.joint_optimizer.build(self.critic.trainable_variables + self.actor.trainable_variables)
            self.critic_before = make_critic("critic_before")
            self.actor_before = make_actor("actor_before")
            for snapshot in (self.critic_before, self.actor_before):
                snapshot.trainable = False

        def counter(name):
            return self.add_weight(
                name=name,
                shape=(),
                dtype="int64",
                initializer="zeros",
                trainable=False,
                aggregation="only_first_replica",
            )

        self.training_steps = counter("training_steps")
        self.evaluation_draws = counter("evaluation_draws")
        self.act_draws = counter("act_draws")
        self._trackers = {name: keras.metrics.Mean(name=name) for name in METRIC_NAMES}
        self.built = True

    # ----------------------------------------------------------------------------------- Keras API
    def compile(self, jit_compile: bool = True, **kwargs):
        """Keras compile without a Keras-managed optimizer (the agent steps its own two Adams).

        With more than one replica, Keras would put every replica in one XLA cluster (which XLA
        rejects), so the step then runs as a plain graph with a warning.
        """
        if jit_compile and self.distribute_strategy.num_replicas_in_sync > 1:
            warnings.warn(
                "SORLAgent: jit_compile=True is not supported with more than one replica "
                "(Keras compiles all replicas as one XLA cluster); compiling without XLA.",
                stacklevel=2,
            )
            jit_compile = False
        super().compile(optimizer=None, jit_compile=jit_compile, **kwargs)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def call(self, observations):
        return self.act(observations)

    def get_config(self):
        return {
            "config": agent_config_to_dict(self.config),
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "env_units": self.env_units.to_dict(),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        """Inverse of get_config; "config" may also be the old flat SORLConfig dict (no env_units)."""
        config = dict(config)
        env_units = EnvUnits.from_dict(config.pop("env_units", None))
        return cls(agent_config_from_dict(config.pop("config")), env_units=env_units, **config)

    # ------------------------------------------------------------------------------------ training
    def train_step(self, batch):
        """One SORL update on `batch` (the reader's dict); returns the metric averages."""
        draws = self.draw_inputs(batch, self.training_steps, noise_lib.TRAIN_STREAM)
        self.training_steps.assign_add(1)
        return self.update(batch, draws)

    def test_step(self, batch):
        """The training losses and gradient norms on `batch`, without changing any weight."""
        draws = self.draw_inputs(batch, self.evaluation_draws, noise_lib.EVAL_STREAM)
        self.evaluation_draws.assign_add(1)
        return self.update(batch, draws, apply=False)

    def draw_inputs(self, batch, counter, stream: int = noise_lib.TRAIN_STREAM) -> dict:
        """This replica's rows of losses.draw_loss_inputs for the global batch, keyed by `counter`."""
        context = _replica_context()
        local_size = tf.shape(batch["observations"])[0]
        seed = noise_lib.stream_key(self.config.seed, stream, counter)
        replicas = context.num_replicas_in_sync
        draws = losses.draw_loss_inputs(
            seed, local_size * replicas, self.action_dim, self.config.m_disc, self.config.m_btt
        )
        if replicas == 1:
            return draws
        start = tf.cast(context.replica_id_in_sync_group, tf.int32) * local_size
        return {
            key: value if value.shape.rank == 0 else value[start : start + local_size]
            for key, value in draws.items()
        }

    def update(self, batch: Mapping[str, tf.Tensor], draws: Mapping[str, tf.Tensor], apply: bool = True):
        """Critic step, actor step, target EMAs with the given random inputs (see draw_inputs).

        Must run in a replica context (inside fit/evaluate or strategy.run). With apply=False only
        the losses and gradient norms are computed. Returns {metric name: running average}.
        """
        context = _replica_context()
        config = self.config
        batch = self._network_batch(batch)
        local_size = tf.shape(batch["observations"])[0]
        global_size = context.all_reduce(tf.distribute.ReduceOp.SUM, local_size)
        # Each replica's loss is a mean over its rows; weighting by its share of the global batch
        # makes the summed replica gradients the gradient of the global-batch mean.
        share = tf.cast(local_size, tf.float32) / tf.cast(global_size, tf.float32)

        if config.update_rule == "reference":
            steps = self._reference_steps(batch, draws, share, context, apply)
            critic_loss, critic_info, critic_norm, actor_loss, actor_info, actor_norm = steps
        else:
            critic_grads, critic_loss, critic_info = self._critic_gradients(batch, draws, share)
            critic_norm = self._clip_and_apply(
                self.critic_optimizer, self.critic.trainable_variables, critic_grads, critic_loss * share, context,
                apply,
            )
            actor_grads, actor_loss, actor_info = self._actor_gradients(batch, draws, share, context)
            actor_norm = self._clip_and_apply(
                self.actor_optimizer, self.actor.trainable_variables, actor_grads, actor_loss * share, context, apply
            )
            if apply:
                _ema_update(self.target_critic.weights, self.critic.weights, config.tau)
                _ema_update(self.target_actor.weights, self.actor.weights, config.tau)

        values = {
            "critic/loss": critic_loss,
            "critic/q_mean": critic_info["q_mean"],
            "critic/grad_norm": critic_norm,
            "actor/loss": actor_loss,
            "actor/fm_loss": actor_info["fm_loss"],
            "actor/sc_loss": actor_info["sc_loss"],
            "actor/q_loss": actor_info["q_loss"],
            "actor/q_mean": actor_info["q_mean"],
            "actor/k": tf.cast(draws["actor_euler_steps"], tf.float32),
            "actor/grad_norm": actor_norm,
        }
        for name, value in values.items():
            self._trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def _network_batch(self, batch):
        """The batch as the networks learn from it: standardised observations (when configured) and
        rewards times reward_scale; the stored actions are already in [-1, 1]."""
        units, scale = self.env_units, self.config.reward_scale
        if not units.normalizes_observations and scale == 1.0:
            return batch
        batch = dict(batch)
        for key in ("observations", "next_observations"):
            batch[key] = units.normalize_observations(batch[key])
        if scale != 1.0:
            batch["rewards"] = batch["rewards"] * scale
        return batch

    def _critic_gradients(self, batch, draws, share, euler_steps=None, into_actor: bool = False):
        """(gradient of share * L_critic w.r.t. the critic's weights, L_critic, info) on this replica's rows.

        euler_steps: the k of a' (default: the drawn one, a tensor). into_actor: a' keeps its gradient
        and the actor's weights follow the critic's in the returned list (update_rule='reference').
        """
        config = self.config
        watched = [v.value for v in self.critic.trainable_variables]
        if into_actor:
            watched += [v.value for v in self.actor.trainable_variables]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(watched)
            loss, info = losses.critic_loss(
                self.actor,
                self.critic,
                self.target_critic,
                batch,
                draws["critic_noise"],
                draws["critic_euler_steps"] if euler_steps is None else euler_steps,
                config.m_btt,
                config.discount,
                config.q_agg,
                next_action_gradient=into_actor,
            )
            weighted_loss = loss * share
        grads = tape.gradient(weighted_loss, watched, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grads, loss, info

    def _reference_steps(self, batch, draws, share, context, apply: bool):
        """The authors' JAX update (update_rule='reference'), kept for ablations against their code.

        One Adam over critic and actor, stepped twice: first on the critic loss, whose gradient also
        reaches the actor through a'; then on the actor loss, with zero gradients for the critic (its
        moments still move it). The Q loss scores actions with the critic from before the first step,
        and the targets move by EMA towards the weights from before both steps. Returns
        (critic loss, info, first step's norm, actor loss, info, second step's norm).
        """
        config = self.config
        if apply:  # tau = 1 copies, through the same cross-replica path as the target EMAs
            _ema_update(self.critic_before.weights, self.critic.weights, 1.0)
            _ema_update(self.actor_before.weights, self.actor.weights, 1.0)
        joint_vars = self.critic.trainable_variables + self.actor.trainable_variables

        def critic_branch(euler_steps):  # a static unroll per k, as the Q loss does
            grads, loss, info = self._critic_gradients(batch, draws, share, euler_steps, into_actor=True)
            return grads, loss, info["q_mean"]

        branches = [functools.partial(critic_branch, k) for k in sampling.step_counts(config.m_btt)]
        critic_grads, critic_loss, q_mean = tf.switch_case(_log2_index(draws["critic_euler_steps"]), branches)
        critic_norm = self._clip_and_apply(
            self.joint_optimizer, joint_vars, critic_grads, critic_loss * share, context, apply
        )
        scoring_critic = self.critic_before if apply else self.critic
        actor_grads, actor_loss, actor_info = self._actor_gradients(batch, draws, share, context, scoring_critic)
        padded = [tf.zeros_like(v.value) for v in self.critic.trainable_variables] + list(actor_grads)
        actor_norm = self._clip_and_apply(self.joint_optimizer, joint_vars, padded, actor_loss * share, context, apply)
        if apply:
            _ema_update(self.target_critic.weights, self.critic_before.weights, config.tau)
            _ema_update(self.target_actor.weights, self.actor_before.weights, config.tau)
        return critic_loss, {"q_mean": q_mean}, critic_norm, actor_loss, actor_info, actor_norm

    def _actor_gradients(self, batch, draws, share, context, scoring_critic=None):
        """(gradient of share * L_actor w.r.t. the actor's weights, L_actor, info) on this replica's rows.

        L_FM and L_SC are differentiated with one tape. The Q loss picks the drawn k with
        tf.switch_case over static k-step unrolls, each branch taking its own gradient, so neither a
        Case op nor a while loop is ever differentiated (XLA compiles the first slowly and runs the
        second's gradient slower; BENCHMARKS.md). The branch uses normaliser 1; the full-batch
        stop-gradient normaliser mean|Q| then divides that gradient, which equals the gradient of
        L_Q because the normaliser is a constant. The Q loss scores with `scoring_critic` (default:
        the online critic).
        """
        config = self.config
        if scoring_critic is None:
            scoring_critic = self.critic
        observations, actions = batch["observations"], batch["actions"]
        watched = [v.value for v in self.actor.trainable_variables]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(watched)
            fm, _ = losses.flow_matching_loss(
                self.actor, observations, actions, draws["fm_noise"], draws["fm_times"], config.m_disc, config.t_eps
            )
            sc, _ = losses.self_consistency_loss(
                self.actor,
                self.target_actor,
                observations,
                actions,
                draws["sc_noise"],
                draws["sc_times"],
                draws["sc_levels"],
                config.t_eps,
            )
            behaviour_loss = config.fm_coef * fm + config.sc_coef * sc
            weighted_loss = behaviour_loss * share
        behaviour_grads = tape.gradient(weighted_loss, watched)

        def q_branch(euler_steps):
            with tf.GradientTape(watch_accessed_variables=False) as q_tape:
                q_tape.watch(watched)
                unnormalised, info = losses.q_loss(
                    self.actor, scoring_critic, observations, draws["q_noise"], euler_steps, config.m_btt,
                    normaliser=1.0,
                )
                weighted_objective = unnormalised * share
            grads = q_tape.gradient(weighted_objective, watched, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads, info["q_mean"], info["q_abs_mean"]

        branches = [functools.partial(q_branch, k) for k in sampling.step_counts(config.m_btt)]
        q_grads, q_mean, q_abs_mean = tf.switch_case(_log2_index(draws["actor_euler_steps"]), branches)
        normaliser = context.all_reduce(tf.distribute.ReduceOp.SUM, q_abs_mean * share)  # full-batch mean |Q|
        q = -q_mean / normaliser
        grads = [b + (config.q_loss_coef / normaliser) * g for b, g in zip(behaviour_grads, q_grads)]
        loss = behaviour_loss + config.q_loss_coef * q
        return grads, loss, {"fm_loss": fm, "sc_loss": sc, "q_loss": q, "q_mean": q_mean}

    def _clip_and_apply(self, optimizer, variables, grads, weighted_loss, context, apply: bool):
        """Clip by the full-batch global norm and apply (unless apply=False); returns the norm before clipping.

        `grads` are this replica's share of the full-batch gradient. A non-finite loss or gradient
        skips the update; the returned norm (and the caller's loss metric) shows the non-finite value.
        """
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, grads) if context.num_replicas_in_sync > 1 else grads
        global_norm = tf.linalg.global_norm(summed)
        if apply:
            total_loss = context.all_reduce(tf.distribute.ReduceOp.SUM, weighted_loss)
            finite = tf.logical_and(tf.math.is_finite(global_norm), tf.math.is_finite(total_loss))
            scale = _clip_scale(global_norm, self.config.grad_clip_norm)
            # Per-replica gradients times the global factor: the optimizer sums them across replicas.
            _apply_if_finite(optimizer, [g * scale for g in grads], variables, finite)
        return global_norm

    # ------------------------------------------------------------------------------------- policy
    def act(self, observations, euler_steps: Optional[int] = None, num_samples: int = 1, seed=None, noise=None,
            cap_step_level: bool = False):
        """Actions [B, action_dim] in env units (in [-1, 1] mapped to the env's bounds; [-1, 1] itself
        without bounds) for raw observations [B, obs_dim] (the one sampling path).

        euler_steps: python int k (default config.inference_euler_steps; may exceed m_btt).
        num_samples: python int N; N > 1 returns the candidate with the highest agg(Q(s, a, k)).
        seed: int scalar for stateless noise (models.noise.seeded_normal) when `noise` is None;
            without either, the noise comes from the agent's act stream.
        noise: optional [B, N, A] (or [B, A] for N = 1) starting noise.
        cap_step_level: for k > m_disc keep the step level d at log2(m_disc) (more, smaller steps
            of the finest trained velocity) instead of log2 k, a level never trained (SPEC section 4).
        Traceable with a symbolic batch dimension.
        """
        euler_steps = self.config.inference_euler_steps if euler_steps is None else int(euler_steps)
        observations = tf.convert_to_tensor(observations, tf.float32)
        if observations.shape.rank != 2 or observations.shape[-1] != self.obs_dim:
            raise ValueError(
                f"act: observations must have shape [batch, {self.obs_dim}] float32; got {observations.shape}."
            )
        if noise is None:
            noise = self._act_noise(tf.shape(observations)[0], int(num_samples), seed)
        else:
            noise = tf.convert_to_tensor(noise, tf.float32)
            if noise.shape.rank == 2:
                noise = noise[:, None, :]
            if noise.shape.rank != 3 or noise.shape[-1] != self.action_dim:
                raise ValueError(f"act: noise must have shape [batch, N, {self.action_dim}]; got {noise.shape}.")
            if num_samples != 1 and noise.shape[1] != num_samples:
                raise ValueError(f"act: num_samples={num_samples} but noise has N={noise.shape[1]} samples.")
        max_level = math.log2(self.config.m_disc) if cap_step_level else None
        actions = sampling.sample_actions(
            self.actor, self.critic, self.env_units.normalize_observations(observations), noise, euler_steps,
            self.config.q_agg, max_level=max_level
        )
        return self.env_units.to_env_actions(actions)

    def _act_noise(self, batch_size, num_samples: int, seed):
        shape = tf.stack([batch_size, num_samples, self.action_dim])
        if seed is not None:
            return noise_lib.seeded_normal(shape, seed, noise_lib.ACT_SEED_WORD)
        key = noise_lib.stream_key(self.config.seed, noise_lib.ACT_STREAM, self.act_draws.value)
        self.act_draws.assign_add(1)
        return tf.random.stateless_normal(shape, seed=key)

    def q_values(self, observations, actions, euler_steps, target: bool = False):
        """agg(Q(s, a, k)) [B] (agg = config.q_agg) for raw observations and env-unit actions (as `act`
        returns them) produced with k = `euler_steps` Euler steps; `target`: the target critic's."""
        observations = self.env_units.normalize_observations(tf.convert_to_tensor(observations, tf.float32))
        actions = self.env_units.from_env_actions(tf.convert_to_tensor(actions, tf.float32))
        step_feature = tf.fill([tf.shape(observations)[0]], tf.cast(euler_steps, tf.float32))
        critic = self.target_critic if target else self.critic
        return sampling.aggregate_q(critic(observations, actions, step_feature), self.config.q_agg)

    def make_policy_fn(self, euler_steps: Optional[int] = None, num_samples: int = 1, jit_compile: bool = True,
                       cap_step_level: bool = False):
        """A numpy policy [n, obs_dim] -> [n, action_dim] over `act` (compiled once per batch size)."""
        act = tf.function(
            lambda observations: self.act(observations, euler_steps=euler_steps, num_samples=num_samples,
                                          cap_step_level=cap_step_level),
            input_signature=[tf.TensorSpec([None, self.obs_dim], tf.float32)],
            jit_compile=jit_compile,
        )

        def policy(observations):
            return act(np.asarray(observations, np.float32)).numpy()

        return policy

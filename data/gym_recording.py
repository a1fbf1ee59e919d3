"""Offline datasets recorded in standard gymnasium envs with a scripted policy of mixed quality.

    python -m data.gym_recording --env=Pendulum-v1 --episodes=50 --format=npz \
        --output=artifacts/data/pendulum-mixed.npz [--val_episodes=5] [--seed=0] [--max_steps=200]
    python -m data.gym_recording --env=InvertedPendulum-v5 --episodes=50 --format=minari \
        --dataset_id=sorl/invertedpendulum-mixed-v0 [--output=MINARI_ROOT]

Each episode gets a quality q in [0, 1] (evenly spread over the episodes, so every dataset
holds good, mediocre and bad behaviour): every step takes a uniformly random action with
probability 1 - q and otherwise the env's scripted controller's action plus Gaussian noise of
(1 - q) * NOISE_SCALE of the action range. Everything is seeded: equal arguments give equal
episodes. Episodes are kept in the env's own units and dtypes (`Episode`), and written

- as a Minari dataset through minari's own writer (env spec, spaces and all), or
- as a D4RL-style .npz: `observations`, `actions`, `rewards`, `terminals` (true termination),
  `timeouts` (time-limit truncation) and, unless next_observations=False, `next_observations`,
  one row per step, episodes concatenated; validation episodes go to NAME-val.npz beside it.

Supported envs: Pendulum-v1 (energy-based swing-up plus PD balance), InvertedPendulum-v5 (PD
balance; the episode terminates when the pole falls, so masks are exercised) and Hopper-v5
(no controller: quality only scales action noise around a fixed stance, for shapes, not skill).
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

from data import files, minari_source, ogbench_source
from data.errors import DataError

NOISE_SCALE = 0.3  # Gaussian noise std at quality 0, as a fraction of the action range


@dataclasses.dataclass(frozen=True)
class Episode:
    """One recorded episode of T steps, in the env's units and dtypes."""

    observations: np.ndarray  # [T + 1, obs_dim]: the reset observation and every step's result
    actions: np.ndarray  # [T, action_dim]
    rewards: np.ndarray  # [T] float64
    terminations: np.ndarray  # [T] bool: true termination at step t (no bootstrap)
    truncations: np.ndarray  # [T] bool: time-limit truncation at step t
    quality: float  # the behaviour policy's quality level for this episode

    @property
    def steps(self) -> int:
        return len(self.actions)

    @property
    def episode_return(self) -> float:
        """Undiscounted return: the sum of every recorded reward."""
        return float(np.sum(self.rewards))


def _pendulum_controller(observation: np.ndarray) -> np.ndarray:
    """Energy-based swing-up far from upright, PD balance near it (Pendulum-v1: g=10, m=l=1,
    so theta'' = 15 sin(theta) + 3 u and E = theta'^2 / 2 + 15 cos(theta) is 15 at the top)."""
    cos, sin, speed = (float(v) for v in observation)
    angle = np.arctan2(sin, cos)
    if cos > 0.85:
        torque = -(10.0 * angle + 2.0 * speed)
    else:
        energy = 0.5 * speed * speed + 15.0 * cos
        torque = (15.0 - energy) * (np.sign(speed) if abs(speed) > 1e-3 else 1.0)
    return np.array([torque])


def _inverted_pendulum_controller(observation: np.ndarray) -> np.ndarray:
    """PD balance on [cart position, pole angle, cart velocity, pole angular velocity]."""
    return np.array([np.dot([1.0, 10.0, 1.0, 1.0], observation)])


def _hopper_controller(observation: np.ndarray) -> np.ndarray:
    del observation
    return np.zeros(3)


CONTROLLERS = {
    "Pendulum-v1": _pendulum_controller,
    "InvertedPendulum-v5": _inverted_pendulum_controller,
    "Hopper-v5": _hopper_controller,
}


def qualities(episodes: int) -> np.ndarray:
    """Per-episode quality levels, evenly spread over [0, 1] (one episode: 1)."""
    return np.linspace(0.0, 1.0, episodes) if episodes > 1 else np.ones(episodes)


def make_env(env_id: str, max_steps: int | None = None):
    """gymnasium.make for a supported id (a registered gymnasium id only; nothing else is built)."""
    import gymnasium

    if env_id not in CONTROLLERS:
        raise DataError(f"--env={env_id}: no scripted policy for it; use one of {sorted(CONTROLLERS)}.")
    return gymnasium.make(env_id, **({"max_episode_steps": int(max_steps)} if max_steps else {}))


def record_episode(env, env_id: str, quality: float, seed: int) -> Episode:
    """One episode of the mixed-quality policy at `quality`; `seed` seeds the env and the policy."""
    space = env.action_space
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    rng = np.random.default_rng(seed)
    controller = CONTROLLERS[env_id]
    observation, _ = env.reset(seed=seed)
    observations, actions, rewards, terminations, truncations = [observation], [], [], [], []
    while True:
        if rng.random() < 1.0 - quality:
            action = rng.uniform(low, high)
        else:
            action = controller(observation) + rng.normal(0.0, (1.0 - quality) * NOISE_SCALE * (high - low))
        action = np.clip(action, low, high).astype(space.dtype)
        observation, reward, terminated, truncated, _ = env.step(action)
        observations.append(observation)
        actions.append(action)
        rewards.append(float(reward))
        terminations.append(bool(terminated))
        truncations.append(bool(truncated) and not terminated)
        if terminated or truncated:
            break
    return Episode(observations=np.asarray(observations), actions=np.asarray(actions),
                   rewards=np.asarray(rewards, np.float64), terminations=np.asarray(terminations),
                   truncations=np.asarray(truncations), quality=float(quality))


def record(env_id: str, episodes: int, seed: int = 0, max_steps: int | None = None) -> list:
    """`episodes` episodes of increasing quality (`qualities`); episode i is seeded by (seed, i)."""
    if int(episodes) < 1:
        raise DataError(f"--episodes={episodes}: record at least one episode.")
    env = make_env(env_id, max_steps)
    try:
        return [record_episode(env, env_id, quality, _episode_seed(seed, index))
                for index, quality in enumerate(qualities(int(episodes)))]
    finally:
        env.close()


def _episode_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def d4rl_arrays(episodes: list, next_observations: bool = True) -> dict:
    """Episodes concatenated in the D4RL layout, one row per step (see the module docstring)."""
    arrays = {
        "observations": np.concatenate([e.observations[:-1] for e in episodes]),
        "actions": np.concatenate([e.actions for e in episodes]),
        "rewards": np.concatenate([e.rewards for e in episodes]),
        "terminals": np.concatenate([e.terminations for e in episodes]),
        "timeouts": np.concatenate([e.truncations for e in episodes]),
    }
    if next_observations:
        arrays["next_observations"] = np.concatenate([e.observations[1:] for e in episodes])
    return arrays


def write_npz(path: str, episodes: list, next_observations: bool = True) -> str:
    """Writes the D4RL-layout file at `path` whole; returns the path."""
    files.write_bytes(path, ogbench_source.npz_bytes(d4rl_arrays(episodes, next_observations)))
    return str(path)


def write_minari(dataset_id: str, episodes: list, env_id: str, root: str | None = None,
                 max_steps: int | None = None, ref_min_score: float | None = None,
                 ref_max_score: float | None = None) -> str:
    """Writes a Minari dataset through minari's writer under `root` (default: the Minari root);
    returns its directory. The env spec recorded is that of `make_env(env_id, max_steps)`."""
    from minari.data_collector import EpisodeBuffer

    env = make_env(env_id, max_steps)
    spec, observation_space, action_space = env.spec, env.observation_space, env.action_space
    env.close()
    buffers = [EpisodeBuffer(id=index, observations=e.observations, actions=e.actions, rewards=e.rewards,
                             terminations=e.terminations, truncations=e.truncations)
               for index, e in enumerate(episodes)]
    return minari_source.create_local_dataset(
        dataset_id, buffers, root or minari_source.datasets_root(), env=spec,
        observation_space=observation_space, action_space=action_space,
        ref_min_score=ref_min_score, ref_max_score=ref_max_score,
        algorithm_name=f"scripted controller mixed with random actions (quality 0..1, noise {NOISE_SCALE})",
        author="sorl-tf data/gym_recording.py",
        description=f"{len(episodes)} {env_id} episodes of a scripted policy of mixed quality.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", required=True, help=f"one of {sorted(CONTROLLERS)}")
    parser.add_argument("--episodes", type=int, required=True, help="training episodes")
    parser.add_argument("--val_episodes", type=int, default=0, help="validation episodes (seeded apart)")
    parser.add_argument("--format", choices=("npz", "minari"), default="npz")
    parser.add_argument("--output", default=None, help="npz: the .npz file; minari: the datasets root")
    parser.add_argument("--dataset_id", default=None, help="minari: the dataset id, e.g. sorl/pendulum-mixed-v0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=None, help="episode time limit (default: the env's)")
    parser.add_argument("--no_next_observations", action="store_true", help="npz: leave next_observations out")
    args = parser.parse_args(argv)
    try:
        splits = {"train": record(args.env, args.episodes, args.seed, args.max_steps)}
        if args.val_episodes:  # seeded apart from training: another seed stream, not the same episodes
            splits["val"] = record(args.env, args.val_episodes, args.seed + 1_000_003, args.max_steps)
        if args.format == "npz":
            if not args.output or not args.output.endswith(".npz"):
                raise DataError(f"--output={args.output}: name the .npz file to write (NAME.npz).")
            paths = {"train": args.output, "val": ogbench_source.val_path_for(args.output)}
            written = [write_npz(paths[split], episodes, not args.no_next_observations)
                       for split, episodes in splits.items()]
        else:
            if not args.dataset_id:
                raise DataError("--dataset_id: required for --format=minari (e.g. sorl/pendulum-mixed-v0).")
            ids = {"train": args.dataset_id, "val": minari_source.val_dataset_id(args.dataset_id)}
            written = [write_minari(ids[split], episodes, args.env, args.output, args.max_steps)
                       for split, episodes in splits.items()]
    except DataError as error:
        sys.exit(f"gym_recording: {error}")
    for split, episodes in splits.items():
        returns = [e.episode_return for e in episodes]
        print(f"{split}: {len(episodes)} episodes, {sum(e.steps for e in episodes)} steps, return mean "
              f"{np.mean(returns):.1f} min {np.min(returns):.1f} max {np.max(returns):.1f}")
    print("wrote", ", ".join(os.fspath(path) for path in written))


if __name__ == "__main__":
    main()

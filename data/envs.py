"""The OGBench environments this project knows: names, tasks and each task's goal.

A *family* is an OGBench dataset family such as 'cube-single-play' (SPEC section 5). From it
follow the dataset file name ('cube-single-play-v0.npz'), the environment that generates the
data ('cube-single-v0'), the single-task environments that define the five rewards
('cube-single-singletask-task{1..5}-v0') and the ids that evaluation passes to
`ogbench.make_env_and_datasets` ('cube-single-play-singletask-task{1..5}-v0').

Each family also carries the paper's training preset (SPEC section 5): q_loss_coef, discount,
q_agg, the evaluation episode length and the default task (OGBench's own: max_episode_steps of the
registered env, and the task its reward_task_id 0 resolves to).

`task_targets` reads each task's goal from the environment itself, exactly where
`ogbench.relabel_utils.relabel_dataset` reads it, so relabelled rewards match OGBench's.
"""

import dataclasses
import functools
import re

import numpy as np

from data.errors import DataError


@dataclasses.dataclass(frozen=True)
class EnvFamily:
    """One OGBench dataset family and how its data and rewards are made."""

    name: str  # OGBench dataset family, e.g. 'cube-single-play'.
    env_base: str  # OGBench environment name without version, e.g. 'cube-single'.
    kind: str  # How task rewards are computed: 'cube', 'scene', 'maze' or 'soccer'.
    num_tasks: int = 5  # Single-task variants task1..taskN.
    # Play-data generation: per-episode p_stack ~ U(lo, hi) for set_new_target; None: no generator.
    p_stack_range: tuple[float, float] | None = None
    _: dataclasses.KW_ONLY
    # The paper's preset (SPEC section 5).
    q_loss_coef: float  # Weight of the normalised Q loss in the actor objective.
    discount: float  # Bellman discount.
    q_agg: str  # Aggregation over critic members: 'mean' or 'min'.
    episode_length: int  # Evaluation episode length (OGBench's max_episode_steps).
    default_task: int  # The task OGBench's default single-task env uses (reward_task_id 0).
    # What the family's environment records (tests/data/test_data_envs.py checks them against the envs):
    # a dataset of another shape comes from another env and would get meaningless task rewards.
    obs_dim: int  # observation vector size.
    action_dim: int  # action vector size.
    qpos_dim: int  # MuJoCo qpos width, the state the task rewards are read from.

    @property
    def dataset_name(self) -> str:
        """OGBench dataset name; the files are NAME.npz and NAME-val.npz."""
        return f"{self.name}-v0"

    @property
    def env_id(self) -> str:
        """The goal-conditioned environment that collects play data."""
        return f"{self.env_base}-v0"

    @property
    def can_generate(self) -> bool:
        return self.p_stack_range is not None

    def singletask_env_id(self, task: int) -> str:
        """The gymnasium id of task `task`'s reward-defining environment."""
        return f"{self.env_base}-singletask-task{check_task(self, task)}-v0"

    def eval_env_name(self, task: int) -> str:
        """The name evaluation passes to `ogbench.make_env_and_datasets(..., env_only=True)`."""
        return f"{self.name}-singletask-task{check_task(self, task)}-v0"


PLAY_EPISODES = 1000  # training episodes of OGBench's play datasets (and of a regeneration by default)

FAMILIES = {
    family.name: family
    for family in [
        EnvFamily("cube-single-play", "cube-single", "cube", p_stack_range=(0.0, 0.0),
                  q_loss_coef=10.0, discount=0.99, q_agg="mean", episode_length=200, default_task=2,
                  obs_dim=28, action_dim=5, qpos_dim=21),
        EnvFamily("cube-double-play", "cube-double", "cube", p_stack_range=(0.0, 0.25),
                  q_loss_coef=50.0, discount=0.99, q_agg="mean", episode_length=500, default_task=2,
                  obs_dim=37, action_dim=5, qpos_dim=28),
        EnvFamily("scene-play", "scene", "scene",
                  q_loss_coef=100.0, discount=0.99, q_agg="mean", episode_length=750, default_task=2,
                  obs_dim=40, action_dim=5, qpos_dim=25),
        EnvFamily("antmaze-large-navigate", "antmaze-large", "maze",
                  q_loss_coef=500.0, discount=0.99, q_agg="min", episode_length=1000, default_task=1,
                  obs_dim=29, action_dim=8, qpos_dim=15),
        EnvFamily("antmaze-giant-navigate", "antmaze-giant", "maze",
                  q_loss_coef=500.0, discount=0.995, q_agg="min", episode_length=1000, default_task=1,
                  obs_dim=29, action_dim=8, qpos_dim=15),
        EnvFamily("humanoidmaze-medium-navigate", "humanoidmaze-medium", "maze",
                  q_loss_coef=100.0, discount=0.995, q_agg="mean", episode_length=2000, default_task=1,
                  obs_dim=69, action_dim=21, qpos_dim=28),
        EnvFamily("humanoidmaze-large-navigate", "humanoidmaze-large", "maze",
                  q_loss_coef=500.0, discount=0.995, q_agg="mean", episode_length=2000, default_task=1,
                  obs_dim=69, action_dim=21, qpos_dim=28),
        EnvFamily("antsoccer-arena-navigate", "antsoccer-arena", "soccer",
                  q_loss_coef=500.0, discount=0.995, q_agg="mean", episode_length=1000, default_task=4,
                  obs_dim=42, action_dim=8, qpos_dim=22),
    ]
}

# Short names users type: 'cube' is cube-single-play (SPEC section 5); every family is also
# reachable by its env name ('cube-single'), its dataset name ('cube-single-play-v0') and its
# env id ('cube-single-v0').
ALIASES = {"cube": "cube-single-play", "antsoccer": "antsoccer-arena-navigate"}
for _family in FAMILIES.values():
    ALIASES[_family.env_base] = _family.name
    ALIASES[_family.env_id] = _family.name
    ALIASES[_family.dataset_name] = _family.name


def resolve_env(name: str) -> EnvFamily:
    """Returns the family for any accepted spelling of an env name; DataError if unknown."""
    key = str(name).strip()
    key = ALIASES.get(key, key)
    if key not in FAMILIES:
        known = ", ".join(sorted(set(ALIASES) | set(FAMILIES)))
        raise DataError(f"unknown env {name!r}: use one of {known}.")
    return FAMILIES[key]


def family_from_dataset_file(path: str) -> EnvFamily:
    """The family named by an OGBench file name such as '.../cube-single-play-v0.npz'."""
    base = re.sub(r"(-val)?\.npz$", "", str(path).rstrip("/").rsplit("/", 1)[-1])
    try:
        return resolve_env(base)
    except DataError:
        raise DataError(
            f"{path}: cannot tell the env from the file name {base!r} (expected an OGBench "
            f"dataset name such as 'cube-single-play-v0.npz'); name the file that way or pass "
            f"--env (one of {', '.join(sorted(FAMILIES))})."
        ) from None


def check_data_fits(family: EnvFamily, where: str, obs_dim: int, action_dim: int, qpos_dim: int | None) -> None:
    """DataError naming `where`, the field, the found and the expected size unless a dataset's
    observation, action and qpos widths are those of `family`'s environment."""
    for field, found, expected in (("observations", obs_dim, family.obs_dim),
                                   ("actions", action_dim, family.action_dim),
                                   ("qpos", qpos_dim, family.qpos_dim)):
        if found is not None and int(found) != expected:
            raise DataError(
                f"{where}: field {field!r} has width {found}, but env {family.name} records {expected}; "
                f"the data comes from another env: pass the --env it was recorded in (or drop --env)."
            )


def check_task(family: EnvFamily, task) -> int:
    """Returns `task` as an int in 1..num_tasks; DataError naming the env otherwise."""
    try:
        task_id = int(task)
    except (TypeError, ValueError):
        task_id = None
    if task_id is None or isinstance(task, bool) or not 1 <= task_id <= family.num_tasks:
        raise DataError(
            f"unknown task {task!r} for env {family.name}: use an integer 1..{family.num_tasks}."
        )
    return task_id


def _read_targets(kind: str, env) -> dict:
    """The goal of the env's current task, read where ogbench's relabel_dataset reads it."""
    unwrapped = env.unwrapped
    if kind == "cube":
        return {"cube_xyzs": unwrapped._data.mocap_pos.copy()}
    if kind == "scene":
        return {
            "cube_xyzs": unwrapped._data.mocap_pos.copy(),
            "num_cubes": int(unwrapped._num_cubes),
            "num_buttons": int(unwrapped._num_buttons),
            "button_states": unwrapped._target_button_states.copy(),
            "drawer_pos": float(unwrapped._target_drawer_pos),
            "window_pos": float(unwrapped._target_window_pos),
        }
    if kind in ("maze", "soccer"):
        return {"goal_xy": np.asarray(unwrapped.cur_goal_xy, np.float64).copy(),
                "goal_tol": float(unwrapped._goal_tol)}
    raise DataError(f"no reward definition for env kind {kind!r}.")


@functools.lru_cache(maxsize=None)
def _all_task_targets(family_name: str) -> tuple:
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    family = FAMILIES[family_name]
    # One compiled env serves every task: ogbench's singletask envs differ only in
    # reward_task_id, which reset() reads to set the task's goal. The global numpy RNG that
    # ogbench's resets draw from is restored afterwards, so this has no side effects.
    rng_state = np.random.get_state()
    env = gymnasium.make(family.singletask_env_id(1))
    try:
        targets = []
        for task in range(1, family.num_tasks + 1):
            env.unwrapped._reward_task_id = task
            env.reset(seed=0)
            task_targets = _read_targets(family.kind, env)
            task_targets["task_name"] = str(env.unwrapped.cur_task_info.get("task_name", f"task{task}"))
            targets.append(task_targets)
    finally:
        env.close()
        np.random.set_state(rng_state)
    return tuple(targets)


def task_targets(family: EnvFamily, task: int) -> dict:
    """Goal of one task: arrays/floats that `data.relabel.task_rewards` needs (cached per process)."""
    return dict(_all_task_targets(family.name)[check_task(family, task) - 1])

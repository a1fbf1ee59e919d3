"""Run-directory helpers: the resolved config beside the checkpoints, and loading an agent back.

    RUN/config.json      {"config": {...SORLConfig...}, "obs_dim": 28, "action_dim": 5, "extra": {...}}
    RUN/checkpoints/     tf.train.CheckpointManager files: ckpt-<step>.index/.data-*, checkpoint

A checkpoint holds the whole agent (networks, targets, both optimizers, random-stream counters)
under the name `agent`, plus the run's step counter under `step`.
"""

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import tensorflow as tf

from models.config import SORLConfig, config_from_dict, config_to_dict

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


def _write_json_atomically(path: Path, payload: dict) -> None:
    """Writes next to `path` and renames, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(payload, file, indent=2, sort_keys=True)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_run_config(workdir, config: SORLConfig, obs_dim: int, action_dim: int, extra: Optional[dict] = None) -> str:
    """Writes workdir/config.json (config, obs_dim, action_dim, optional extra); returns its path."""
    path = Path(workdir) / CONFIG_FILE
    payload = {"config": config_to_dict(config), "obs_dim": int(obs_dim), "action_dim": int(action_dim)}
    if extra:
        payload["extra"] = dict(extra)
    _write_json_atomically(path, payload)
    return str(path)


def read_run_config(workdir) -> dict:
    """workdir/config.json as written by write_run_config ("config" stays a plain dict).

    Raises FileNotFoundError / ValueError naming the file and what is wrong with it.
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a run directory written by training.")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); restore it or start a new run directory.") from None
    for key in ("config", "obs_dim", "action_dim"):
        if key not in payload:
            raise ValueError(f"{path} has no field {key!r}; it was not written by models.checkpoints.write_run_config.")
    return payload


def make_checkpoint_manager(agent, workdir, step_variable, max_to_keep: int = 3) -> tf.train.CheckpointManager:
    """CheckpointManager over tf.train.Checkpoint(agent=agent, step=step_variable) in workdir/checkpoints.

    Save with `manager.save(checkpoint_number=int(step_variable))` to name files ckpt-<step> (a plain
    save() numbers them 1, 2, ...); resume with `manager.checkpoint.restore(manager.latest_checkpoint)`.
    """
    checkpoint = tf.train.Checkpoint(agent=agent, step=step_variable)
    return tf.train.CheckpointManager(
        checkpoint, str(Path(workdir) / CHECKPOINT_DIR), max_to_keep=max_to_keep, step_counter=step_variable
    )


def load_agent(
    workdir, checkpoint_path: Optional[str] = None, cap_step_level: Optional[bool] = None
) -> Tuple["SORLAgent", SORLConfig, int]:  # noqa: F821
    """(agent, config, step) from a run directory: the latest checkpoint, or `checkpoint_path`.

    The agent is rebuilt from config.json and every saved variable is restored into it (an
    architecture that does not match the checkpoint raises an error naming the checkpoint).
    `cap_step_level`, if given, replaces the run's setting of that inference-only field.
    """
    from models.sorl import SORLAgent  # here: checkpoints is imported by code that never builds agents

    run = read_run_config(workdir)
    config = config_from_dict(run["config"])
    if cap_step_level is not None:
        config = dataclasses.replace(config, cap_step_level=bool(cap_step_level))
    if checkpoint_path is None:
        directory = Path(workdir) / CHECKPOINT_DIR
        checkpoint_path = tf.train.latest_checkpoint(str(directory))
        if checkpoint_path is None:
            raise FileNotFoundError(f"No checkpoint in {directory}: train first, or pass a checkpoint path.")
    agent = SORLAgent(config, run["obs_dim"], run["action_dim"])
    try:
        status = tf.train.Checkpoint(agent=agent).restore(str(checkpoint_path))
        status.assert_existing_objects_matched()
    except (tf.errors.NotFoundError, AssertionError, ValueError) as error:
        raise ValueError(
            f"Cannot restore {checkpoint_path} into the agent described by {Path(workdir) / CONFIG_FILE}: {error}"
        ) from None
    status.expect_partial()
    # Read separately: the step variable is often one of the agent's own (e.g. training_steps),
    # and one checkpointed value cannot be bound to two new Python objects in one restore.
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    tf.train.Checkpoint(step=step).restore(str(checkpoint_path)).expect_partial()
    return agent, config, int(step.numpy())

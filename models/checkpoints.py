"""Run directories: reading config.json back (any version), checkpoints, and loading an agent.

    RUN/config.json      {"agent": {...AgentConfig...}, "data": {env, task, episode_length},
                          "schedule": {gradient_steps, log_every, ...}, "obs_dim": 28, "action_dim": 5,
                          "data_dir": "...", "strategy": "default"}   (pipeline.config.save_run_config)
    RUN/checkpoints/     tf.train.CheckpointManager files: ckpt-<step>.index/.data-*, checkpoint

Runs written before the agent and run configs were split hold {"config": {flat SORLConfig},
"obs_dim", "action_dim", "extra": {"data", "strategy"}}; read_config_file converts them, so every
reader (load_agent here, pipeline.config.load_run_config) goes through that one parser.

A checkpoint holds the whole agent (networks, targets, both optimizers, random-stream counters)
under the name `agent`, plus the run's step counter under `step`.
"""

import json
from pathlib import Path
from typing import Optional, Tuple

import tensorflow as tf

from models.config import AgentConfig, agent_config_from_dict, split_old_config

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
_DATA_FIELDS = ("env", "task", "episode_length")  # of an old flat config: the run's data source


def _convert_old_layout(payload: dict) -> dict:
    """An old {"config": {flat}, ..., "extra": {...}} file in the current layout (see the module docstring)."""
    agent, run = split_old_config(payload["config"])
    run.pop("cap_step_level", None)  # now an argument of act/evaluate/export, not part of a run
    extra = payload.get("extra") or {}
    return {
        "agent": agent,
        "data": {k: run.pop(k) for k in _DATA_FIELDS if k in run},
        "schedule": run,
        "obs_dim": payload["obs_dim"],
        "action_dim": payload["action_dim"],
        "data_dir": extra.get("data"),
        "strategy": extra.get("strategy"),
    }


def read_config_file(workdir) -> dict:
    """workdir/config.json in the current layout (module docstring), old files converted.

    Raises FileNotFoundError / ValueError naming the file and what is wrong with it.
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a run directory written by training.")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); restore it or start a new run directory.") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} holds a {type(payload).__name__}, not a JSON object; it was not written by training.")
    layout = ("config",) if "config" in payload and "agent" not in payload else ("agent", "data", "schedule")
    for key in layout + ("obs_dim", "action_dim"):
        if key not in payload:
            raise ValueError(f"{path} has no field {key!r}; it was not written by pipeline.config.save_run_config.")
    return _convert_old_layout(payload) if layout == ("config",) else payload


def make_checkpoint_manager(agent, workdir, step_variable, max_to_keep: int = 3) -> tf.train.CheckpointManager:
    """CheckpointManager over tf.train.Checkpoint(agent=agent, step=step_variable) in workdir/checkpoints.

    Save with `manager.save(checkpoint_number=int(step_variable))` to name files ckpt-<step> (a plain
    save() numbers them 1, 2, ...); resume with `manager.checkpoint.restore(manager.latest_checkpoint)`.
    """
    checkpoint = tf.train.Checkpoint(agent=agent, step=step_variable)
    return tf.train.CheckpointManager(
        checkpoint, str(Path(workdir) / CHECKPOINT_DIR), max_to_keep=max_to_keep, step_counter=step_variable
    )


def load_agent(workdir, checkpoint_path: Optional[str] = None) -> Tuple["SORLAgent", AgentConfig, int]:  # noqa: F821
    """(agent, agent config, step) from a run directory: the latest checkpoint, or `checkpoint_path`.

    The agent is rebuilt from config.json (any version, see read_config_file) and every saved
    variable is restored into it (an architecture that does not match the checkpoint raises an
    error naming the checkpoint). Inference options (Euler steps, cap_step_level) are arguments of
    agent.act, not part of the run.
    """
    from models.sorl import SORLAgent  # here: checkpoints is imported by code that never builds agents

    run = read_config_file(workdir)
    try:
        config = agent_config_from_dict(run["agent"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{Path(workdir) / CONFIG_FILE}: {error}") from None
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

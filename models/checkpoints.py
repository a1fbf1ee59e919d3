"""Run directories: reading config.json back (any version), checkpoints, and loading an agent.

    RUN/config.json      {"agent": {...AgentConfig...}, "data": {env, task, episode_length},
                          "schedule": {gradient_steps, log_every, ...}, "obs_dim": 28, "action_dim": 5,
                          "data_dir": "...", "strategy": "default",
                          "dataset": {action_bounds, observation_statistics, ...}}   (pipeline.config.save_run_config;
                                     "dataset" absent in runs written before it: identity units)
    RUN/checkpoints/     tf.train.CheckpointManager files: ckpt-<step>.index/.data-*, checkpoint

Runs written before the agent and run configs were split hold {"config": {flat SORLConfig},
"obs_dim", "action_dim", "extra": {"data", "strategy"}}; read_config_file converts them, so every
reader (load_agent here, pipeline.config.load_run_config) goes through that one parser.

A checkpoint holds the whole agent (networks, targets, both optimizers, random-stream counters)
under the name `agent`, plus the run's step counter under `step`.

Resuming trusts the files, not the `checkpoint` index: `checkpoint_files` lists ckpt-<step> by the
names on disk, `restore_newest` tries them newest first and falls back past any that does not restore
(truncated, corrupted, half deleted), and `rewrite_index` rebuilds the index from what is left.
`remove_unfinished_saves` deletes what a save cut short by a kill leaves behind.
"""

import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf

from models.config import AgentConfig, agent_config_from_dict, split_old_config

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged"  # RUN/checkpoints/damaged/: checkpoints a resume skipped, kept for inspection
INDEX_FILE = "checkpoint"  # tf.train.CheckpointManager's list of checkpoints
_CHECKPOINT_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-\d+-of-\d+)$")
# A save writes ckpt-<step>_temp/ (sharded parts, merged at the end) and `checkpoint.tmp<hex>` (the
# index, renamed into place); a kill mid-save leaves them behind.
_UNFINISHED_SAVE = re.compile(r"^(ckpt-\d+_temp.*|checkpoint\.tmp[0-9a-f]+)$")
# What a checkpoint that cannot be read raises: OpError (NotFound, DataLoss, a bad sstable), IndexError
# (a .data file shorter than its index says), AssertionError (objects that do not match).
RESTORE_ERRORS = (tf.errors.OpError, IndexError, AssertionError, ValueError, OSError)


class CheckpointError(ValueError):
    """No checkpoint of a run restores; the message names each file tried and why it failed."""
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


def checkpoint_files(directory) -> Dict[int, List[Path]]:
    """{step: [its .index and .data files]} of the ckpt-<step> files in `directory`, newest first.

    Read from the file names, so a lost or stale `checkpoint` index hides nothing.
    """
    found: Dict[int, List[Path]] = {}
    directory = Path(directory)
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            match = _CHECKPOINT_FILE.match(path.name)
            if match and path.is_file():
                found.setdefault(int(match.group(1)), []).append(path)
    return dict(sorted(found.items(), reverse=True))


def remove_unfinished_saves(directory) -> List[Path]:
    """Deletes what saves cut short left in `directory` (module docstring); returns what it removed."""
    removed = []
    directory = Path(directory)
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if _UNFINISHED_SAVE.match(path.name):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed.append(path)
    return removed


@dataclasses.dataclass
class Restored:
    """What restore_newest restored, and the newer checkpoints it skipped with the reason for each."""

    path: str  # the checkpoint prefix, .../ckpt-<step>
    step: int  # <step> of its name
    skipped: List[Tuple[int, str]]  # (step, why) of each newer checkpoint that did not restore


def _why(error: BaseException) -> str:
    """One line of what went wrong: the error's type and its first line, without TF's op prefix."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error)).strip().splitlines()
    text = text[0] if text else ""
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def restore_newest(checkpoint: tf.train.Checkpoint, directory, say: Callable[[str], None] = print) -> Restored:
    """Restores the newest checkpoint in `directory` that restores whole into `checkpoint`.

    Tries ckpt-<step> newest first (checkpoint_files); one that fails to read or whose objects do
    not match the checkpoint's is skipped with a line through `say` naming it and why. Raises
    FileNotFoundError when there is none, CheckpointError naming every file tried when none restores.
    """
    directory = Path(directory)
    candidates = checkpoint_files(directory)
    if not candidates:
        raise FileNotFoundError(f"No checkpoint in {directory}.")
    skipped = []
    for step, paths in candidates.items():
        prefix = directory / f"ckpt-{step}"
        if not prefix.with_name(prefix.name + ".index").exists():
            why = f"{prefix.name}.index is missing"
        else:
            try:
                status = checkpoint.restore(str(prefix))
                status.assert_existing_objects_matched()
                status.expect_partial()  # a reader may restore part of it (load_agent: no step)
                return Restored(str(prefix), step, skipped)
            except RESTORE_ERRORS as error:
                why = _why(error)
        say(f"Skipping checkpoint {prefix} (it does not restore: {why}).")
        skipped.append((step, why))
    tried = "; ".join(f"ckpt-{step} ({', '.join(p.name for p in candidates[step])}): {why}" for step, why in skipped)
    raise CheckpointError(f"No checkpoint in {directory} restores: {tried}.")


def set_aside(directory, steps) -> Optional[Path]:
    """Moves the files of checkpoints `steps` to directory/damaged/ (a later save may reuse their
    names); returns that folder, or None when there was nothing to move."""
    directory = Path(directory)
    files = checkpoint_files(directory)
    moving = [path for step in steps for path in files.get(step, [])]
    if not moving:
        return None
    target = directory / DAMAGED_DIR
    target.mkdir(exist_ok=True)
    for path in moving:
        path.replace(target / path.name)
    return target


def rewrite_index(directory) -> None:
    """Rewrites the `checkpoint` index to list every ckpt-<step> in `directory`, the newest last,
    so CheckpointManager's latest_checkpoint and max_to_keep see the checkpoints that are there."""
    steps = sorted(checkpoint_files(directory))
    if steps:
        paths = [str(Path(directory) / f"ckpt-{step}") for step in steps]
        tf.compat.v1.train.update_checkpoint_state(str(directory), paths[-1], all_model_checkpoint_paths=paths)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_agent(workdir, checkpoint_path: Optional[str] = None,
               say: Callable[[str], None] = _stderr) -> Tuple["SORLAgent", AgentConfig, int]:  # noqa: F821
    """(agent, agent config, step) from a run directory: the newest checkpoint that restores (a
    skipped damaged one is reported through `say`), or `checkpoint_path`.

    The agent is rebuilt from config.json (any version, see read_config_file) and every saved
    variable is restored into it (an architecture that does not match the checkpoint raises an
    error naming the checkpoint). Inference options (Euler steps, cap_step_level) are arguments of
    agent.act, not part of the run.
    """
    from models.sorl import SORLAgent  # here: checkpoints is imported by code that never builds agents
    from models.units import EnvUnits

    run = read_config_file(workdir)
    path = Path(workdir) / CONFIG_FILE
    try:
        config = agent_config_from_dict(run["agent"])
        units = EnvUnits.from_run_dataset(run.get("dataset"), config.normalize_observations, run["obs_dim"],
                                          run["action_dim"], where=f"{path}: 'dataset'")
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}" if str(path) not in str(error) else str(error)) from None
    agent = SORLAgent(config, run["obs_dim"], run["action_dim"], env_units=units)
    if checkpoint_path is None:
        directory = Path(workdir) / CHECKPOINT_DIR
        try:
            checkpoint_path = restore_newest(tf.train.Checkpoint(agent=agent), directory, say).path
        except FileNotFoundError:
            raise FileNotFoundError(f"No checkpoint in {directory}: train first, or pass a checkpoint path.") from None
        except CheckpointError as error:
            raise CheckpointError(f"{error} The agent is described by {Path(workdir) / CONFIG_FILE}.") from None
    else:
        try:
            status = tf.train.Checkpoint(agent=agent).restore(str(checkpoint_path))
            status.assert_existing_objects_matched()
        except RESTORE_ERRORS as error:
            raise CheckpointError(
                f"Cannot restore {checkpoint_path} into the agent described by {Path(workdir) / CONFIG_FILE}: "
                f"{_why(error)}"
            ) from None
        status.expect_partial()
    # Read separately: the step variable is often one of the agent's own (e.g. training_steps),
    # and one checkpointed value cannot be bound to two new Python objects in one restore.
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    tf.train.Checkpoint(step=step).restore(str(checkpoint_path)).expect_partial()
    return agent, config, int(step.numpy())

"""pipeline/preprocess.py: OGBench files -> TFRecords equal to ogbench's own loading and
relabelling, under the DirectRunner in-process and with worker processes; bad input fails
with one clear error and leaves nothing behind."""

import hashlib
import os

import numpy as np
import ogbench
import pytest

from data import envs, ogbench_source, reader
from data.errors import DataError
from pipeline import preprocess as preprocess_module
from pipeline.preprocess import preprocess

NAME = "cube-single-play-v0"
MULTI_PROCESSING = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


def _load(path):
    with np.load(path) as data:
        return {key: data[key].copy() for key in data.files}


def _write_pair(directory, train, val, name=NAME):
    """Writes NAME.npz and NAME-val.npz; returns the ogbench: source string."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.npz").write_bytes(ogbench_source.npz_bytes(train))
    (directory / f"{name}-val.npz").write_bytes(ogbench_source.npz_bytes(val))
    return f"ogbench:{directory / f'{name}.npz'}"


def _with_cubes_at_task_goals(arrays, seed):
    """A copy whose qpos puts the cube near some task's goal in every third row (within 6 cm),
    so every task has rows that succeed and rows that do not."""
    arrays = {key: value.copy() for key, value in arrays.items()}
    rng = np.random.default_rng(seed)
    family = envs.resolve_env("cube-single")
    goals = [envs.task_targets(family, task)["cube_xyzs"][0] for task in range(1, 6)]
    for row in range(0, len(arrays["qpos"]), 3):
        offset = rng.normal(size=3)
        offset *= rng.uniform(0, 0.06) / np.linalg.norm(offset)
        arrays["qpos"][row, 14:17] = goals[(row // 3) % 5] + offset
    return arrays


@pytest.fixture(scope="module")
def relabelled_source(cube_npz_dir, tmp_path_factory):
    """The fixture episodes with cubes moved to task goals, and their conversion (3 train shards)."""
    directory = tmp_path_factory.mktemp("relabel")
    source = _write_pair(directory / "npz", _with_cubes_at_task_goals(_load(cube_npz_dir / f"{NAME}.npz"), 0),
                         _with_cubes_at_task_goals(_load(cube_npz_dir / f"{NAME}-val.npz"), 1))
    output = directory / "tfrecord"
    metadata = preprocess(source, str(output), num_shards=3)
    return directory / "npz" / f"{NAME}.npz", output, metadata


@pytest.mark.parametrize("task", [1, 2, 3, 4, 5])
def test_records_equal_ogbench_loading_and_relabelling(relabelled_source, task):
    npz_path, output, _ = relabelled_source
    _, train, val = ogbench.make_env_and_datasets(f"cube-single-play-singletask-task{task}-v0",
                                                  dataset_path=str(npz_path))
    for split, expected in (("train", train), ("val", val)):
        stored = reader.read_split(output, split)
        # Every transition once, in source order, with ogbench's values.
        assert len(stored["observations"]) == len(expected["observations"])
        np.testing.assert_array_equal(stored["observations"], expected["observations"])
        np.testing.assert_array_equal(stored["next_observations"], expected["next_observations"])
        np.testing.assert_array_equal(stored["actions"], np.clip(expected["actions"], -1 + 1e-5, 1 - 1e-5))
        np.testing.assert_array_equal(stored["terminals"], expected["terminals"])
        np.testing.assert_array_equal(stored[f"rewards/task{task}"], expected["rewards"])
        np.testing.assert_array_equal(stored[f"masks/task{task}"], expected["masks"])
    assert 0 < train["masks"].mean() < 1  # both outcomes occur, so equality means something


def test_metadata_describes_the_dataset(relabelled_source):
    npz_path, output, metadata = relabelled_source
    assert metadata == reader.load_metadata(output)
    assert metadata["env"] == "cube-single-play" and metadata["env_id"] == NAME
    assert (metadata["obs_dim"], metadata["action_dim"]) == (28, 5)
    assert metadata["counts"] == {"train": 300, "val": 100} and metadata["episodes"] == {"train": 3, "val": 1}
    assert [shard["file"] for shard in metadata["shards"]["train"]] == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert sum(shard["count"] for shard in metadata["shards"]["train"]) == 300
    val_path = str(npz_path).replace(".npz", "-val.npz")
    assert metadata["source_sha256"] == {
        path: hashlib.sha256(open(path, "rb").read()).hexdigest() for path in (str(npz_path), val_path)}
    assert metadata["eval_env_names"]["task2"] == "cube-single-play-singletask-task2-v0"
    assert metadata["action_clip"] == 1 - 1e-5
    expected = ogbench.utils.load_dataset(str(npz_path))
    stats = metadata["statistics"]["train"]
    observations = expected["observations"].astype(np.float64)
    np.testing.assert_allclose(stats["observations"]["mean"], observations.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats["observations"]["std"], observations.std(0), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(stats["observations"]["min"], observations.min(0))
    np.testing.assert_array_equal(stats["observations"]["max"], observations.max(0))
    assert sorted(os.listdir(output)) == sorted(
        ["metadata.json", "val-00000-of-00001.tfrecord"] + [f"train-0000{i}-of-00003.tfrecord" for i in range(3)])


def test_worker_processes_write_the_same_bytes(cube_npz_dir, cube_tfrecord_dir, tmp_path):
    output = tmp_path / "multi"
    preprocess(f"ogbench:{cube_npz_dir / f'{NAME}.npz'}", str(output), num_shards=2, pipeline_args=MULTI_PROCESSING)
    assert sorted(os.listdir(output)) == sorted(os.listdir(cube_tfrecord_dir))
    for name in os.listdir(output):
        assert (output / name).read_bytes() == (cube_tfrecord_dir / name).read_bytes(), name


def test_actions_are_clipped_within_tolerance_and_rejected_beyond(cube_npz_dir, tmp_path):
    train, val = _load(cube_npz_dir / f"{NAME}.npz"), _load(cube_npz_dir / f"{NAME}-val.npz")
    train["actions"][0] = [1.0, -1.0, 1.00005, -1.00005, 0.5]
    output = tmp_path / "out"
    preprocess(_write_pair(tmp_path / "ok", train, val), str(output))
    stored = reader.read_split(output, "train", features=["actions"])["actions"]
    np.testing.assert_array_equal(stored[0], np.float32([1 - 1e-5, -(1 - 1e-5), 1 - 1e-5, -(1 - 1e-5), 0.5]))
    train["actions"][7, 2] = 1.01
    with pytest.raises(DataError, match=r"cube-single-play-v0.npz: field 'actions' row 7 column 2 is 1\.01"):
        preprocess(_write_pair(tmp_path / "bad", train, val), str(tmp_path / "out2"))


def _corrupt(arrays, kind):
    if kind == "nan":
        arrays["observations"][42, 3] = np.nan
    elif kind == "inf":
        arrays["qpos"][250, 0] = np.inf
    elif kind == "missing key":
        del arrays["qpos"]
    elif kind == "length":
        arrays["actions"] = arrays["actions"][:-1]
    elif kind == "ends mid-episode":
        arrays = {key: value[:-3] for key, value in arrays.items()}
    return arrays


@pytest.mark.parametrize("kind,message", [
    ("nan", r"-val.npz: field 'observations' row 42 column 3 is nan; datasets must be finite"),
    ("inf", r"-val.npz: field 'qpos' row 250 column 0 is inf"),
    ("missing key", r"-val.npz: missing field 'qpos' \(found \['actions', 'observations', 'qvel', 'terminals'\]\)"),
    ("length", r"-val.npz: field 'actions' has 302 rows but 'observations' has 303"),
    ("ends mid-episode", r"-val.npz: field 'terminals' is 0 on the last row 299: the file ends in the middle"),
])
def test_bad_values_fail_with_file_field_and_value_and_leave_nothing(cube_npz_dir, tmp_path, kind, message):
    # The bad file is the val split, so train shards may already be written when it fails.
    train = _load(cube_npz_dir / f"{NAME}.npz")
    source = _write_pair(tmp_path / "npz", train, _corrupt({k: v.copy() for k, v in train.items()}, kind))
    with pytest.raises(DataError, match=message):
        preprocess(source, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["npz"]  # no dataset, no hidden scratch directory


def test_missing_and_unreadable_files(cube_npz_dir, tmp_path):
    with pytest.raises(DataError, match=r"nowhere/cube-single-play-v0.npz: file not found .*pipeline/generate.py"):
        preprocess(f"ogbench:{tmp_path}/nowhere/{NAME}.npz", str(tmp_path / "out"))
    train = _load(cube_npz_dir / f"{NAME}.npz")
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    (only_train / f"{NAME}.npz").write_bytes(ogbench_source.npz_bytes(train))
    with pytest.raises(DataError, match=r"cube-single-play-v0-val.npz: file not found \(val split"):
        preprocess(f"ogbench:{only_train / f'{NAME}.npz'}", str(tmp_path / "out"))
    truncated = tmp_path / "truncated"
    _write_pair(truncated, train, train)
    content = (truncated / f"{NAME}.npz").read_bytes()
    (truncated / f"{NAME}.npz").write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match=r"cube-single-play-v0.npz: not a readable .npz file"):
        preprocess(f"ogbench:{truncated / f'{NAME}.npz'}", str(tmp_path / "out"))
    with pytest.raises(DataError, match=r"--input='hdf5:x': use 'ogbench:PATH/NAME.npz'"):
        preprocess("hdf5:x", str(tmp_path / "out"))


def test_env_comes_from_the_file_name_or_env(cube_npz_dir, tmp_path):
    train, val = _load(cube_npz_dir / f"{NAME}.npz"), _load(cube_npz_dir / f"{NAME}-val.npz")
    source = _write_pair(tmp_path / "npz", train, val, name="my-play-data")
    with pytest.raises(DataError, match=r"my-play-data.npz: cannot tell the env .* pass --env"):
        preprocess(source, str(tmp_path / "out"))
    with pytest.raises(DataError, match=r"unknown env 'cube-7'"):
        preprocess(source, str(tmp_path / "out"), env="cube-7")
    metadata = preprocess(source, str(tmp_path / "out"), env="cube-single")
    assert metadata["env"] == "cube-single-play" and metadata["counts"]["train"] == 300


def test_existing_output_needs_overwrite_and_other_directories_are_never_replaced(cube_npz_dir, cube_tfrecord_dir,
                                                                                    tmp_path):
    source = f"ogbench:{cube_npz_dir / f'{NAME}.npz'}"
    with pytest.raises(DataError, match="already exists; choose another output directory or pass --overwrite"):
        preprocess(source, str(cube_tfrecord_dir))
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="exists and is not an output of this job"):
        preprocess(source, str(unrelated), overwrite=True)
    assert os.listdir(unrelated) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert preprocess(source, str(empty), num_shards=1)["counts"]["train"] == 300
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "stale.tfrecord").write_text("old")
    (previous / "metadata.json").write_text("{}")
    preprocess(source, str(previous), num_shards=1, overwrite=True)
    assert "stale.tfrecord" not in os.listdir(previous)
    assert reader.load_metadata(previous)["counts"]["train"] == 300
    assert sorted(os.listdir(tmp_path)) == ["empty", "previous", "unrelated"]  # no scratch left


def test_cli_reports_counts_and_errors(cube_npz_dir, tmp_path, capsys):
    preprocess_module.main([f"--input=ogbench:{cube_npz_dir / f'{NAME}.npz'}", f"--output={tmp_path / 'out'}",
                            "--num_shards=1"])
    assert "{'train': 300, 'val': 100} transitions" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="preprocess.py: .*file not found"):
        preprocess_module.main([f"--input=ogbench:{tmp_path}/x/{NAME}.npz", f"--output={tmp_path / 'out2'}"])


# Hostile input, class by class: every case ends in one line naming file, field and value, and
# leaves no output and no hidden scratch directory.

def _tiny_cube_arrays(episodes=2, rows=4):
    """cube-single-shaped rows (obs 28, actions 5, qpos 21): `episodes` episodes of `rows` rows."""
    n = episodes * rows
    terminals = np.zeros(n, bool)
    terminals[rows - 1::rows] = True
    rng = np.random.default_rng(0)
    return {"observations": rng.normal(size=(n, 28)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (n, 5)).astype(np.float32), "terminals": terminals,
            "qpos": rng.normal(size=(n, 21)).astype(np.float32), "qvel": np.zeros((n, 20), np.float32)}


def _raw_npz(path, arrays):
    """An .npz written with pickling allowed, as a hostile file may be."""
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)
    path.write_bytes(buffer.getvalue())


def _hostile_pair(directory, train, val=None, name=NAME):
    directory.mkdir(parents=True, exist_ok=True)
    _raw_npz(directory / f"{name}.npz", train)
    _raw_npz(directory / f"{name}-val.npz", _tiny_cube_arrays(1) if val is None else val)
    return directory / f"{name}.npz"


def _cli_fails(argv, *fragments):
    """Runs preprocess.py's main; returns its one-line error after checking it names every fragment."""
    with pytest.raises(SystemExit) as caught:
        preprocess_module.main(argv)
    message = str(caught.value.code)
    assert message.startswith("preprocess.py: ") and "\n" not in message, message
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)
    return message


def _nothing_written(directory, *inputs):
    assert sorted(os.listdir(directory)) == sorted(inputs), os.listdir(directory)


def _with(arrays, key, value):
    return {**arrays, key: value}


NON_NUMERIC = {
    "object": lambda v: v.astype(object), "str": lambda v: v.astype(str), "bytes": lambda v: v.astype("S8"),
    "complex": lambda v: v.astype(np.complex64), "record": lambda v: np.zeros(len(v), [("a", "f4")]),
}


@pytest.mark.parametrize("field", ["observations", "actions", "terminals", "qpos"])
@pytest.mark.parametrize("kind", sorted(NON_NUMERIC))
def test_non_numeric_fields_are_refused_before_any_unpickling(tmp_path, field, kind):
    arrays = _tiny_cube_arrays()
    path = _hostile_pair(tmp_path / "in", _with(arrays, field, NON_NUMERIC[kind](arrays[field])))
    dtype = np.load(path, allow_pickle=True)[field].dtype
    _cli_fails([f"--input=ogbench:{path}", f"--output={tmp_path / 'out'}"],
               path, f"field '{field}' has dtype {dtype}", "expected real numbers")
    _nothing_written(tmp_path, "in")


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("rows", [1, 2])
def test_splits_without_transitions_are_refused(tmp_path, split, rows):
    # Every row its episode's last (rows=1), or a file of single-row episodes after one episode that ends it.
    empty = _tiny_cube_arrays(episodes=3, rows=1)
    good = _tiny_cube_arrays(episodes=2, rows=rows + 2)
    path = _hostile_pair(tmp_path / "in", empty if split == "train" else good, good if split == "train" else empty)
    bad_file = path if split == "train" else str(path).replace(".npz", "-val.npz")
    _cli_fails([f"--input=ogbench:{path}", f"--output={tmp_path / 'out'}"],
               bad_file, "field 'terminals' is 1 on all 3 rows", f"the {split} split holds no transitions")
    _nothing_written(tmp_path, "in")


@pytest.mark.parametrize("num_shards, fragments", [
    (0, ["--num_shards=0: use a positive number"]), (-4, ["--num_shards=-4: use a positive number"]),
    (7, ["--num_shards=7: more shards than the 6 training transitions", "use at most 6"]),
    (10**9, [f"--num_shards={10**9}: more shards than the 6 training transitions"]),
])
def test_shard_counts_beyond_the_transitions_are_refused(tmp_path, num_shards, fragments):
    path = _hostile_pair(tmp_path / "in", _tiny_cube_arrays())
    _cli_fails([f"--input=ogbench:{path}", f"--output={tmp_path / 'out'}", f"--num_shards={num_shards}"], *fragments)
    _nothing_written(tmp_path, "in")


def test_as_many_shards_as_transitions_and_single_row_episodes_convert(tmp_path):
    arrays = _tiny_cube_arrays()
    arrays["terminals"][:2] = True  # two single-row episodes: shards whose rows hold no transition
    path = _hostile_pair(tmp_path / "in", arrays)
    metadata = preprocess(f"ogbench:{path}", str(tmp_path / "out"), num_shards=4)
    assert metadata["counts"]["train"] == 4 and len(metadata["shards"]["train"]) == 4


@pytest.mark.parametrize("output, extra, fragments", [
    ("afile", [], ["afile: exists and is not an output of this job"]),
    ("afile/sub", [], ["afile/sub: cannot write the output there", "choose a writable --output"]),
    ("in", ["--overwrite"], ["--output=", "overlaps the input", f"in/{NAME}.npz"]),
    (f"in/{NAME}.npz", ["--overwrite"], ["overlaps the input"]),
    (".", ["--overwrite"], ["overlaps the input"]),
])
def test_unwritable_or_overlapping_outputs_are_refused_and_the_input_kept(tmp_path, output, extra, fragments):
    path = _hostile_pair(tmp_path / "in", _tiny_cube_arrays())
    (tmp_path / "in" / "metadata.json").write_text("{}")  # so the input folder even looks like an output
    (tmp_path / "afile").write_text("x")
    _cli_fails([f"--input=ogbench:{path}", f"--output={tmp_path / output}", *extra], *fragments)
    _nothing_written(tmp_path, "in", "afile")
    assert sorted(os.listdir(tmp_path / "in")) == sorted([f"{NAME}.npz", f"{NAME}-val.npz", "metadata.json"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused(tmp_path):
    path = _hostile_pair(tmp_path / "in", _tiny_cube_arrays())
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    _cli_fails([f"--input=ogbench:{path}", f"--output={locked / 'out'}"], "locked/out: cannot write the output there")
    assert os.listdir(locked) == []


@pytest.mark.parametrize("env, field, found, expected", [
    ("cube-double", "observations", 28, 37), ("antmaze-large", "observations", 28, 29),
    ("humanoidmaze-medium", "observations", 28, 69), ("antsoccer", "observations", 28, 42),
])
def test_env_refuses_data_of_another_env(tmp_path, env, field, found, expected):
    path = _hostile_pair(tmp_path / "in", _tiny_cube_arrays(), name="my-data")
    family = envs.resolve_env(env)
    _cli_fails([f"--input=ogbench:{path}", f"--output={tmp_path / 'out'}", f"--env={env}"],
               path, f"field '{field}' has width {found}", f"env {family.name} records {expected}")
    _nothing_written(tmp_path, "in")


@pytest.mark.parametrize("field, width, expected", [
    ("observations", 27, 28), ("actions", 8, 5), ("qpos", 15, 21), ("qpos", 28, 21)])
def test_the_family_named_by_the_file_refuses_other_sizes(tmp_path, field, width, expected):
    arrays = _tiny_cube_arrays()
    arrays[field] = np.zeros((len(arrays[field]), width), np.float32)
    val = _tiny_cube_arrays(1)
    val[field] = np.zeros((len(val[field]), width), np.float32)
    path = _hostile_pair(tmp_path / "in", arrays, val)
    _cli_fails([f"--input=ogbench:{path}", f"--output={tmp_path / 'out'}"],
               path, f"field '{field}' has width {width}", f"env cube-single-play records {expected}")
    _nothing_written(tmp_path, "in")


def test_command_line_takes_eval_env_and_action_bounds(tmp_path, capsys):
    from data import gym_recording

    episodes = gym_recording.record("Pendulum-v1", 2, seed=0, max_steps=10)
    path = gym_recording.write_npz(str(tmp_path / "own.npz"), episodes)
    preprocess_module.main([f"--input=npz:{path}", f"--output={tmp_path / 'out'}", "--eval_env=Pendulum-v1",
                            "--action_low=-4", "--action_high=4"])
    metadata = reader.load_metadata(str(tmp_path / "out"))
    assert metadata["eval_env"] == "Pendulum-v1"
    assert metadata["action_bounds"] == {"low": [-4.0], "high": [4.0]}  # the flags win over the env's [-2, 2]
    assert "wrote" in capsys.readouterr().out

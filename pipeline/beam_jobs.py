"""Apache Beam plumbing shared by pipeline/generate.py and pipeline/preprocess.py.

- `run_pipeline` runs a pipeline under any runner given by Beam's usual options (DirectRunner
  by default; `--direct_num_workers=2 --direct_running_mode=multi_processing` spreads work
  over local cores; `--runner=dask` / `--runner=portable` and every other runner as
  pipeline/beam_runners.py describes) and turns a worker's DataError back into a DataError in
  the caller.
- `StagedDirectory` is where a job writes: a hidden sibling directory renamed into place
  whole for local paths, so an interrupted job never leaves a complete-looking dataset.
  Staging folders are named after their host and process (`staging_path`), so the next run
  removes those of a killed job (`remove_stale_staging`) and never those of a running one.
- The DoFns: `RolloutEpisodeFn` (one play episode -> one .npz) and `WriteShardFn` (one
  row range -> one TFRecord shard plus its statistics).

DoFns live here, in an importable module, because Beam pickles them by reference: worker
processes import `pipeline.beam_jobs`, so the package must be installed where they run (local
workers share the driver's environment, where requirements.txt installed it; remote runners get
it with --setup_file=./pyproject.toml).
"""

import json
import math
import os
import re
import shutil
import uuid
import warnings

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from data import files, stats as stats_lib
from data.files import remove_stale_staging, staging_path
from data.errors import DataError
from pipeline import beam_runners

STATS_DIR = ".stats"
ERRORS_DIR = ".errors"
EPISODES_DIR = "episodes"


def is_remote(path: str) -> bool:
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def create(path: str):
    """A binary write handle (parent directories made for local paths), never compressed."""
    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def write_bytes(path: str, data: bytes) -> None:
    """Writes a file whole: locally through a renamed temporary (a killed writer leaves no half
    file for a resumed job to trust); object stores write objects whole themselves."""
    if is_remote(path):
        with create(path) as handle:
            handle.write(data)
    else:
        files.write_bytes(path, data)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()


def write_json(path: str, value) -> None:
    write_bytes(path, json.dumps(value, indent=1, sort_keys=True).encode())


def read_json(path: str):
    return json.loads(read_bytes(path))


def list_files(pattern: str) -> list:
    """Paths matching a glob, sorted; empty if none."""
    try:
        result = FileSystems.match([pattern])[0]
    except Exception:  # Beam raises when nothing matches on some filesystems
        return []
    return sorted(meta.path for meta in result.metadata_list)


def quiet_known_warnings() -> None:
    """Silences two harmless warnings of every env import: no display for GLFW (nothing here
    renders) and gymnasium's note on ogbench's float64 space bounds."""
    warnings.filterwarnings("ignore", message=".*DISPLAY environment variable is missing.*")
    warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32.*")


def pipeline_options(pipeline_args=(), elements: int | None = None,
                     worker_threads: int | None = None) -> PipelineOptions:
    """Beam options from command-line style args; DirectRunner unless --runner says otherwise.

    `elements` (the number of elements the job creates) and `worker_threads` (the Dask cluster's, from
    beam_runners.check_workers) size the Dask runner's partitions; the
    --runner shorthands are expanded as pipeline/beam_runners.py describes. Worker processes log
    at ERROR unless --default_sdk_harness_log_level says otherwise (below that every local worker
    prints its start-up chatter).
    """
    args = beam_runners.runner_args(pipeline_args, elements, worker_threads)
    if not any(arg.startswith("--default_sdk_harness_log_level") for arg in args):
        args.append("--default_sdk_harness_log_level=ERROR")
    return PipelineOptions(args)


_DATA_ERROR_TEXT = re.compile(r"DataError: (.*)$", re.MULTILINE)
_BEAM_STEP_SUFFIX = re.compile(r"(?: \[while running [^\]]*\])+$")


def _clean_data_error(message: str) -> DataError:
    return DataError(_BEAM_STEP_SUFFIX.sub("", message.strip()))


def run_pipeline(build, pipeline_args=(), elements: int | None = None) -> None:
    """Runs `build(pipeline)` to completion. `elements`: how many elements `build` creates.

    The runner's workers are checked first (`beam_runners.check_workers`: a DataError instead of
    a hang). A DataError that escapes a worker (DoFns record theirs instead, see
    `report_data_errors`) is raised here as a DataError with the worker's message; Beam otherwise
    wraps it in runner-specific text."""
    worker_threads = beam_runners.check_workers(beam_runners.runner_args(pipeline_args))
    options = pipeline_options(pipeline_args, elements, worker_threads)
    try:
        with beam.Pipeline(options=options) as pipeline:
            build(pipeline)
    except DataError as error:
        raise _clean_data_error(str(error)) from None
    except Exception as error:
        match = _DATA_ERROR_TEXT.search(str(error))
        if match:
            raise _clean_data_error(match.group(1)) from None
        raise


def report_data_errors(fn):
    """Wraps DoFn.process: a DataError is written to OUT/.errors/ instead of failing the bundle.

    Runners log a failing element's traceback (several times, from every process involved)
    and retry it; bad data gives the same error on every retry. The driver raises the recorded
    message after the run (`raise_recorded_errors`), and elements that start after an error
    skip their work.
    """

    def process(self, element):
        errors_dir = join(self._out_dir, ERRORS_DIR)
        if list_files(join(errors_dir, "*.txt")):
            return
        try:
            yield from fn(self, element)
        except DataError as error:
            write_bytes(join(errors_dir, f"{uuid.uuid4().hex}.txt"), str(error).encode())

    return process


def raise_recorded_errors(out_dir: str) -> None:
    """Raises a DataError a worker recorded in OUT/.errors/, if any (the first by text, so a
    rerun reports the same one)."""
    recorded = list_files(join(out_dir, ERRORS_DIR, "*.txt"))
    if recorded:
        messages = sorted(read_bytes(path).decode() for path in recorded)
        raise DataError(messages[0])


def output_error(path: str, error: OSError) -> DataError:
    """The one-line DataError for an output location the job cannot write."""
    return DataError(f"{path}: cannot write the output there ({error.strerror or error}"
                     f"{': ' + str(error.filename) if error.filename else ''}); choose a writable --output.")


class StagedDirectory:
    """A directory that appears at `final` only when complete.

    Local: files go to a hidden sibling '.NAME.tmp-HOST-PID-XXXXXXXX' that `publish` renames to
    `final`; such siblings of killed jobs are removed first.
    An existing `final` may be an empty directory, or (with overwrite=True) a previous output,
    recognised by its `marker` file; any other existing directory is refused, so a mistyped
    --output never deletes unrelated files. Remote filesystems have no directory rename: files
    go straight to `final`, and the caller writes its marker (metadata.json) last.
    """

    def __init__(self, final: str, overwrite: bool = False, marker: str = "metadata.json"):
        self.final = str(final).rstrip("/")
        self.overwrite = overwrite
        self.remote = is_remote(self.final)
        self._marker = marker
        if self.remote:
            if not overwrite and FileSystems.exists(join(self.final, marker)):
                raise DataError(f"{self.final}: already exists; choose another output directory or pass --overwrite "
                                f"to replace it.")
            self.path = self.final
            return
        self._check_replaceable(os.path.abspath(self.final))
        parent, name = os.path.split(os.path.abspath(self.final))
        remove_stale_staging(parent, f".{name}")
        self.path = staging_path(parent, f".{name}")
        try:
            os.makedirs(parent, exist_ok=True)
            os.makedirs(self.path)
        except OSError as error:
            raise output_error(self.final, error) from None

    def _check_replaceable(self, final: str) -> None:
        try:
            if not os.path.exists(final) or (os.path.isdir(final) and not os.listdir(final)):
                return
        except OSError as error:
            raise output_error(final, error) from None
        if os.path.isdir(final) and os.path.exists(os.path.join(final, self._marker)):
            if self.overwrite:
                return
            raise DataError(f"{final}: already exists; choose another output directory or pass --overwrite to "
                            f"replace it.")
        raise DataError(f"{final}: exists and is not an output of this job (no {self._marker}); choose a new or "
                        f"empty directory.")

    def publish(self) -> None:
        if self.remote:
            return
        final = os.path.abspath(self.final)
        self._check_replaceable(final)  # again: something may have appeared while the job ran
        try:
            if os.path.exists(final):
                trash = f"{self.path}.old"
                os.rename(final, trash)
                os.rename(self.path, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(self.path, final)
        except OSError as error:
            raise output_error(self.final, error) from None

    def discard(self) -> None:
        if not self.remote:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        return False


class RolloutEpisodeFn(beam.DoFn):
    """EpisodeTask -> one episode's rows written to OUT/episodes/<split>-<index>.npz."""

    def __init__(self, family_name: str, episode_length: int, out_dir: str):
        self._family_name = family_name
        self._episode_length = episode_length
        self._out_dir = out_dir
        self._env = None

    def setup(self):
        from data import envs, play_data

        self._family = envs.resolve_env(self._family_name)
        self._env = play_data.make_env(self._family, self._episode_length)

    @report_data_errors
    def process(self, task):
        from data import ogbench_source, play_data

        rows = play_data.rollout_episode(self._env, self._family, task)
        write_bytes(join(self._out_dir, EPISODES_DIR, f"{task.name}.npz"),
                    ogbench_source.npz_bytes(rows, compress=False))
        yield task.name, len(rows["actions"])

    def teardown(self):
        if self._env is not None:
            self._env.close()


class WriteShardFn(beam.DoFn):
    """ShardTask -> OUT/<shard file> (TFRecord) and OUT/.stats/<shard file>.json (statistics, and
    the episode returns of sources with their own rewards)."""

    ROWS_PER_CHUNK = 10_000  # ogbench rows encoded per numpy pass
    EPISODES_PER_CHUNK = 20  # minari episodes per pass

    def __init__(self, source, out_dir: str):
        self._source = source
        self._out_dir = out_dir
        self._encoder = None

    def setup(self):
        from data.tfrecord import ExampleEncoder

        shapes = self._source.feature_shapes()
        self._encoder = ExampleEncoder({name: math.prod(shape) for name, shape in shapes.items()})

    @report_data_errors
    def process(self, task):
        step = self.ROWS_PER_CHUNK if self._source.kind == "ogbench" else self.EPISODES_PER_CHUNK
        summary, count, episodes, written, returns = {}, 0, 0, 0, []
        path = join(self._out_dir, task.file_name)
        try:
            handle = create(path)
        except OSError as error:  # a full disk or a vanished output directory: no use retrying
            raise output_error(path, error) from None
        with handle:
            for start in range(task.start, task.stop, step):
                columns, chunk_episodes, chunk_returns = self._source.read_chunk(
                    task.split, start, min(start + step, task.stop))
                blob = self._encoder.encode_and_frame(columns)
                try:
                    handle.write(blob)
                except OSError as error:
                    raise output_error(path, error) from None
                written += len(blob)
                count += len(columns[next(iter(columns))])
                episodes += chunk_episodes
                returns = None if chunk_returns is None else returns + list(chunk_returns)
                summary = stats_lib.merge_all([summary, stats_lib.summarise(columns)])
        record = {"file": task.file_name, "split": task.split, "index": task.index, "count": count,
                  "episodes": episodes, "bytes": written, "returns": returns,
                  "stats": {name: value.to_state() for name, value in summary.items()}}
        write_json(join(self._out_dir, STATS_DIR, f"{task.file_name}.json"), record)
        yield task.file_name

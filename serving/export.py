"""Exports a trained SORL agent as a SavedModel that TF Serving loads as it is.

Library (pipeline/train.py calls it at the end of training):

    version_dir = export_saved_model(agent, "RUN/export")   # -> "RUN/export/1"

CLI:

    python serving/export.py --workdir=RUN --model_base_path=RUN/export [--version=N] \
        [--budgets=1,2,4,8] [--best_of=4x8,8x16] [--default_euler_steps=4] [--jit_compile] \
        [--adaptive_max_euler_steps=8 --adaptive_threshold=0.0] [--cap_step_level]

(`--default_steps` and `--adaptive_max_steps` are the older spellings of those two flags.)

Writes MODEL_BASE_PATH/<version>/ with the signatures of serving/signatures.py and
assets.extra/tf_serving_warmup_requests (one PredictionLog per signature). The SavedModel is
written to a hidden temporary folder next to the version folders, loaded back and checked against
the in-process agent, and only then renamed into place (TF Serving ignores non-integer names, so a
half-written export is never served).
"""

import argparse
import os
import shutil
import sys
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from models import noise as noise_lib
from serving import servable as servable_lib
from serving import signatures as signatures_lib
from serving.signatures import SignatureVariant
from serving.versions import list_versions


class ExportVerificationError(RuntimeError):
    """The saved model does not reproduce the in-process agent; nothing was published."""


class _PolicyModule(tf.Module):
    """What the SavedModel holds: the tf.Variables the signatures read (and an XLA export's
    noise stream).

    Tracking the Keras models instead would export each Keras variable twice (Keras writes a
    copy of the tf.Variable it wraps into the SavedModel graph); the checkpoint then restores
    the copy while the functions read the original, which TF1-style loaders (TF Serving,
    `saved_model_cli run`) report as an uninitialized variable. Keras' own ExportArchive tracks
    the functions' variables the same way.
    """

    def __init__(self, functions: Dict[str, tf.types.experimental.PolymorphicFunction],
                 noise_stream: Optional[noise_lib.NoiseStream] = None):
        super().__init__(name="sorl_policy")
        if noise_stream is not None:  # a resource: re-initialised (new OS key) on every load
            self.noise_stream = noise_stream
        for name, function in functions.items():
            # Also as attributes: `tf.saved_model.load(path).act_k1(observations)` calls the
            # function itself (one XLA launch for a jit_compile export); `.signatures[name]`
            # goes through a graph wrapper first (signatures.loaded_function).
            setattr(self, name, function)
        used = {}
        for function in functions.values():
            for variable in function.get_concrete_function().variables:
                used.setdefault(id(variable), variable)
        self.serving_variables = list(used.values())


def agent_dims(agent) -> Tuple[int, int]:
    """(obs_dim, action_dim) of a SORLAgent."""
    return int(agent.obs_dim), int(agent.action_dim)


def next_version(model_base_path: str) -> int:
    """Largest existing integer version + 1 (1 for an empty or missing base path)."""
    versions = list_versions(model_base_path)
    return versions[-1] + 1 if versions else 1


def warmup_requests(variants: Sequence[SignatureVariant], obs_dim: int
                    ) -> Dict[str, Dict[str, np.ndarray]]:
    """One batch-1 request per signature: zero observations (and seed 0 for seeded ones)."""
    requests = {}
    for variant in variants:
        inputs = {"observations": np.zeros([1, obs_dim], np.float32)}
        if variant.seeded:
            inputs["seed"] = np.zeros([1], np.int64)
        requests[variant.name] = inputs
    return requests


def write_warmup_file(version_dir: str, requests: Dict[str, Dict[str, np.ndarray]]) -> str:
    """assets.extra/tf_serving_warmup_requests: a TFRecord of PredictionLog(predict_log=...)."""
    path = os.path.join(version_dir, servable_lib.WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature_name
            for alias, value in inputs.items():
                request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def expected_specs(variant: SignatureVariant, obs_dim: int, action_dim: int):
    """({input: (numpy type, shape)}, {output: (numpy type, shape)}) a signature must have."""
    inputs = {"observations": (np.float32, (None, obs_dim))}
    if variant.seeded:
        inputs["seed"] = (np.int64, (None,))
    outputs = {"actions": (np.float32, (None, action_dim))}
    if variant.adaptive:
        outputs["steps_used"] = (np.int32, (None,))
    return inputs, outputs


def reference_outputs(agent, variant: SignatureVariant, observations: np.ndarray,
                      seeds: np.ndarray, cap_step_level: bool = False) -> Dict[str, np.ndarray]:
    """What the in-process agent answers for a seeded variant: agent.act (or adaptive_act) on
    the noise the signature draws from `seeds`."""
    noise = noise_lib.row_seeded_noise(tf.constant(seeds), variant.num_samples, agent.action_dim)
    observations = tf.constant(observations)
    if variant.adaptive:
        from models import adaptive

        actions, steps_used = adaptive.adaptive_act(agent, observations, noise=noise,
                                                    max_euler_steps=variant.euler_steps,
                                                    threshold=variant.adaptive_threshold,
                                                    cap_step_level=cap_step_level)
        return {"actions": np.asarray(actions), "steps_used": np.asarray(steps_used)}
    return {"actions": np.asarray(agent.act(observations, euler_steps=variant.euler_steps,
                                            num_samples=variant.num_samples, noise=noise,
                                            cap_step_level=cap_step_level))}


def action_range(agent, slack: float = 1e-5) -> Tuple[np.ndarray, np.ndarray]:
    """(low, high) [action_dim] that every answer lies in: the env's bounds (agent.env_units), else [-1, 1],
    widened by `slack` of the range for float rounding in the map back to env units."""
    units = getattr(agent, "env_units", None)  # agent-like objects without units answer in [-1, 1]
    maps = units is not None and units.maps_actions
    low = np.asarray(units.action_low if maps else [-1.0] * agent.action_dim)
    high = np.asarray(units.action_high if maps else [1.0] * agent.action_dim)
    margin = slack * (high - low) if maps else 0.0
    return low - margin, high + margin


def _max_difference(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) for k in want)


def verify_export(agent, export_dir: str, variants: Sequence[SignatureVariant], batch: int = 3,
                  atol: float = 1e-5, cap_step_level: bool = False) -> None:
    """Loads `export_dir` back and checks it against `agent`; ExportVerificationError if not.

    Checks: every signature is in saved_model.pb with the inputs and outputs of expected_specs;
    each seeded signature equals the agent on the same noise (reference_outputs); its batched
    rows equal single-row calls; unseeded signatures return finite actions within the env's action
    bounds (action_range) of the right shape; every warm-up request runs; the TF1 session loader (TF Serving's) gives the
    seeded signatures' numbers too.
    """
    problems = _check_specs(agent, export_dir, variants)
    if not problems:
        loaded = tf.saved_model.load(export_dir)
        observations = np.random.default_rng(0).normal(size=[batch, agent.obs_dim])
        observations = observations.astype(np.float32)
        seeds = np.arange(101, 101 + batch, dtype=np.int64)
        seeded_outputs = {}
        for variant in variants:
            problems += _check_signature(agent, loaded.signatures[variant.name], variant,
                                         observations, seeds, atol, seeded_outputs, cap_step_level)
        for record in servable_lib.read_warmup_requests(export_dir):
            request = record.predict_log.request
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            loaded.signatures[request.model_spec.signature_name](**inputs)
        problems += _check_session_loader(export_dir, observations, seeds, seeded_outputs, atol)
    if problems:
        raise ExportVerificationError(f"{export_dir}: " + "; ".join(problems))


def _check_specs(agent, export_dir: str, variants: Sequence[SignatureVariant]) -> list:
    """Problems with the SignatureDefs in saved_model.pb (missing, other inputs or outputs)."""
    specs = servable_lib.signature_specs(servable_lib.read_serving_meta_graph(export_dir))
    problems = []
    for variant in variants:
        if variant.name not in specs:
            problems.append(f"signature {variant.name} missing")
            continue
        spec = specs[variant.name]
        got = ({k: (v.dtype.type, v.shape) for k, v in spec.inputs.items()},
               {k: (v.dtype.type, v.shape) for k, v in spec.outputs.items()})
        want = expected_specs(variant, *agent_dims(agent))
        if got != want:
            problems.append(f"{variant.name} has (inputs, outputs) {got}, expected {want}")
    return problems


def _check_signature(agent, function, variant: SignatureVariant, observations: np.ndarray,
                     seeds: np.ndarray, atol: float, seeded_outputs: dict,
                     cap_step_level: bool = False) -> list:
    """Problems with one loaded signature; a seeded one's outputs go to `seeded_outputs`."""

    def call(rows):
        inputs = {"observations": tf.constant(observations[rows])}
        if variant.seeded:
            inputs["seed"] = tf.constant(seeds[rows])
        return {k: v.numpy() for k, v in function(**inputs).items()}

    outputs = call(slice(None))
    actions = outputs["actions"]
    low, high = action_range(agent)
    if actions.shape != (len(observations), agent.action_dim) or not np.all((actions >= low) & (actions <= high)):
        return [f"{variant.name} returned actions of shape {actions.shape} outside [{low}, {high}] or "
                f"non-finite: {actions}"]
    if not variant.seeded:
        return []  # fresh noise: nothing to compare with
    seeded_outputs[variant.name] = outputs
    problems = []
    want = reference_outputs(agent, variant, observations, seeds, cap_step_level)
    if _max_difference(outputs, want) > atol:
        problems.append(f"{variant.name} differs from the agent on the same noise by up to "
                        f"{_max_difference(outputs, want):.3g}")
    for row in range(len(observations)):
        single = call(slice(row, row + 1))
        batched_row = {k: v[row:row + 1] for k, v in outputs.items()}
        if _max_difference(single, batched_row) > atol:
            problems.append(f"{variant.name} row {row} of a batch differs from a single-row "
                            f"call by {_max_difference(single, batched_row):.3g}")
    return problems


def _check_session_loader(export_dir: str, observations: np.ndarray, seeds: np.ndarray,
                          want: Dict[str, Dict[str, np.ndarray]], atol: float) -> list:
    """Problems found running the seeded signatures through the TF1 session loader, the path
    TF Serving and `saved_model_cli run` load with (graph import, restore op, feeds by name)."""
    problems = []
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        try:
            meta_graph = _load_with_session_loader(session, export_dir)
            for name, outputs in want.items():
                signature = meta_graph.signature_def[name]
                got = session.run({k: v.name for k, v in signature.outputs.items()},
                                  {signature.inputs["observations"].name: observations,
                                   signature.inputs["seed"].name: seeds})
                if _max_difference(got, outputs) > atol:
                    problems.append(f"{name} differs between the TF1 session loader and "
                                    f"tf.saved_model.load by {_max_difference(got, outputs):.3g}")
        except tf.errors.OpError as error:
            problems.append(f"the TF1 session loader (TF Serving's) cannot run it: {error.message}")
    return problems


def _load_with_session_loader(session, export_dir: str):
    """tf.compat.v1.saved_model.loader.load, without its deprecation notice (expected here)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        return tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
    finally:
        logger.setLevel(level)


def export_saved_model(agent, model_base_path: str, version: Optional[int] = None,
                       budgets: Sequence[int] = (1, 2, 4, 8),
                       best_of: Sequence[Tuple[int, int]] = ((4, 8),),
                       default_euler_steps: Optional[int] = None, verify: bool = True,
                       jit_compile: bool = False,
                       adaptive: Optional[Tuple[int, float]] = None,
                       cap_step_level: bool = False) -> str:
    """Exports `agent` to MODEL_BASE_PATH/<version>/ and returns that folder.

    Args:
      agent: a SORLAgent (uses agent.act, agent.q_values, agent.config).
      model_base_path: folder of integer version folders (created if missing).
      version: the version number; default: largest existing + 1. An existing one is an error.
      budgets: Euler step counts k, exported as act_k{k}.
      best_of: (k, N) pairs, exported as act_k{k}_best_of_{N}.
      default_euler_steps: k of serving_default; default agent.config.inference_euler_steps.
      verify: load the export back and compare with the agent before publishing it.
      jit_compile: XLA-compile the signature functions (faster batch-1 calls in process; a
        tensorflow_model_server needs --xla_cpu_compilation_enabled=true to run them on CPU).
      adaptive: (max_euler_steps, threshold) also exports act_adaptive[_seeded] (models/adaptive.py).
      cap_step_level: every signature with k > m_disc keeps the step level d at log2(m_disc)
        (see agent.act); fixed in the export, like its budgets.
    """
    obs_dim, action_dim = agent_dims(agent)
    if default_euler_steps is None:
        default_euler_steps = int(agent.config.inference_euler_steps)
    variants = signatures_lib.plan_signatures(list(budgets), [tuple(p) for p in best_of],
                                              default_euler_steps, adaptive)
    if version is None:
        version = next_version(model_base_path)
    if not isinstance(version, int) or version < 0:
        raise ValueError(f"version={version!r} must be an int >= 0 (TF Serving version folders)")
    final_dir = os.path.join(model_base_path, str(version))
    if os.path.exists(final_dir):
        raise FileExistsError(f"{final_dir} already exists; pass another --version or leave it "
                              f"out to use {next_version(model_base_path)}")
    os.makedirs(model_base_path, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=model_base_path)
    try:
        os.chmod(tmp_dir, 0o755)  # mkdtemp's 0700 would hide the version from a server user
        noise_stream = noise_lib.new_noise_stream(jit_compile)
        functions = signatures_lib.make_signatures(agent, variants, obs_dim, action_dim,
                                                   jit_compile, noise_stream, cap_step_level)
        tf.saved_model.save(_PolicyModule(functions, noise_stream), tmp_dir, signatures=functions)
        write_warmup_file(tmp_dir, warmup_requests(variants, obs_dim))
        if verify:
            verify_export(agent, tmp_dir, variants, cap_step_level=cap_step_level)
        if os.path.exists(final_dir):
            raise FileExistsError(f"{final_dir} appeared while exporting; nothing was replaced")
        os.rename(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final_dir


def parse_budgets(text: str) -> Tuple[int, ...]:
    """'1,2,4,8' -> (1, 2, 4, 8)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--budgets={text!r} must be comma-separated ints, e.g. 1,2,4,8") from None


def parse_best_of(text: str) -> Tuple[Tuple[int, int], ...]:
    """'4x8,8x16' -> ((4, 8), (8, 16)): k Euler steps x N candidates; '' -> ()."""
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            k, n = part.lower().split("x")
            pairs.append((int(k), int(n)))
        except ValueError:
            raise ValueError(f"--best_of item {part!r} must look like KxN (k steps, N "
                             f"candidates), e.g. 4x8") from None
    return tuple(pairs)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export a SORL run as a TF Serving SavedModel.")
    parser.add_argument("--workdir", required=True, help="run folder (config.json, checkpoints/)")
    parser.add_argument("--model_base_path", default=None,
                        help="folder of version folders (default WORKDIR/export)")
    parser.add_argument("--version", type=int, default=None, help="default: largest + 1")
    parser.add_argument("--checkpoint", default=None, help="checkpoint path (default: latest)")
    parser.add_argument("--budgets", type=parse_budgets, default=(1, 2, 4, 8),
                        help="Euler step counts k, comma-separated, exported as act_k{k}")
    parser.add_argument("--best_of", type=parse_best_of, default=((4, 8),),
                        help="KxN pairs, comma-separated (default 4x8; '' for none)")
    parser.add_argument("--default_euler_steps", "--default_steps", dest="default_euler_steps", type=int,
                        default=None,
                        help="Euler steps k of serving_default (default: the agent's inference_euler_steps)")
    parser.add_argument("--jit_compile", action="store_true",
                        help="XLA-compile the signatures (TF Serving then needs "
                             "--xla_cpu_compilation_enabled=true)")
    parser.add_argument("--adaptive_max_euler_steps", "--adaptive_max_steps", dest="adaptive_max_euler_steps",
                        type=int, default=None,
                        help="also export act_adaptive[_seeded] with this cap on k (power of two)")
    parser.add_argument("--adaptive_threshold", type=float, default=0.0,
                        help="relative Q gain that earns another doubling of k (act_adaptive)")
    parser.add_argument("--cap_step_level", action="store_true",
                        help="signatures with k > m_disc keep the step level d at log2(m_disc)")
    parser.add_argument("--no_verify", dest="verify", action="store_false",
                        help="publish without loading the export back and comparing it")
    return parser.parse_args(argv)


def main(argv: Sequence[str] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from models import checkpoints  # the model package is only needed by the CLI

    agent, _, step = checkpoints.load_agent(args.workdir, args.checkpoint)
    base_path = args.model_base_path or os.path.join(args.workdir, "export")
    version_dir = export_saved_model(agent, base_path, version=args.version,
                                     budgets=args.budgets, best_of=args.best_of,
                                     default_euler_steps=args.default_euler_steps, verify=args.verify,
                                     jit_compile=args.jit_compile,
                                     adaptive=None if args.adaptive_max_euler_steps is None else
                                     (args.adaptive_max_euler_steps, args.adaptive_threshold),
                                     cap_step_level=args.cap_step_level)
    print(f"exported step {step} of {args.workdir} to {version_dir}")


if __name__ == "__main__":
    main()

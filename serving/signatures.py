"""The serving signatures of a SORL policy, each a trace of the agent's own `act`.

Every signature takes raw `observations` [batch, obs_dim] float32 and returns `actions`
[batch, action_dim] in the env's units (the agent's [-1, 1] mapped to the dataset's action bounds,
after observation standardisation when the agent has it: models/units.py, inside `agent.act`, so
inside the SavedModel); they differ in the Euler budget k, the number N of candidates
ranked by the critic (best-of-N) and where the starting noise comes from:

    act_k{k}                        k steps, fresh noise per call
    act_k{k}_best_of_{N}            k steps, N candidates, the critic's best
    serving_default                 the default budget (agent.config.inference_euler_steps)
    act_adaptive                    optional (export's `adaptive`): k chosen per row by the
                                    critic, up to a cap (models/adaptive.py); also returns
                                    `steps_used` [batch] int32
    <any of the above>_seeded       same, plus a required input `seed` [batch] int64:
                                    row i's noise is drawn from seed[i] alone (serving_default's
                                    seeded twin is act_k{default}_seeded)

Why seeded twins and not an optional `seed` input: TF 2.x can write SignatureDef.defaults (a
tf.function argument with a tensor default becomes a PlaceholderWithDefault), and TF Serving's
gRPC Predict fills missing inputs from them, but TF Serving's REST front requires every signature
input in the request ("instances" as a plain list is refused for a two-input signature, "inputs"
without `seed` fails with "Missing named input"), and signatures restored by
`tf.saved_model.load` require every argument too. So the plain signatures keep `observations` as
their only input, which works with every client, and reproducibility lives in the `_seeded` twins.
A per-row seed (not one per request) gives SPEC section 4's guarantee through the API itself:
row i of a batched call equals a single-row call with the same observation and seed.

The noise is the only thing the export adds: sampling (Euler unroll, clipping, best-of-N ranking)
is `agent.act(observations, euler_steps=k, num_samples=N, noise=noise, cap_step_level=...)` (for
act_adaptive `models.adaptive.adaptive_act`, which calls agent.act).

Where the noise comes from (models/noise.py):
- seeded twins: row_seeded_noise, TF's stateless normal kernel on (seed[i], SEED_SALT), drawn
  outside the XLA-compiled part even with jit_compile, because XLA's normal sampler gives other
  numbers than TF's kernel for the same seed (the seeded answers would depend on the export option);
- plain signatures (fresh_noise): new noise on every call and in every process, so two server
  processes, or one process after a restart, never replay each other's noise. Without XLA it comes
  from TF's stateful sampler seeded by the OS; with jit_compile from a NoiseStream inside the
  compiled function, so that a plain call is one XLA launch with no TF graph call in front of it.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from models.noise import NoiseStream, fresh_noise, new_noise_stream, row_seeded_noise

DEFAULT_SIGNATURE = "serving_default"
ADAPTIVE_SIGNATURE = "act_adaptive"


@dataclasses.dataclass(frozen=True)
class SignatureVariant:
    """One exported signature: `euler_steps` Euler steps, best of `num_samples`, seeded or not.

    With `adaptive_threshold` set it is the adaptive policy and `euler_steps` is its cap.
    """

    name: str
    euler_steps: int
    num_samples: int
    seeded: bool
    adaptive_threshold: Optional[float] = None

    @property
    def adaptive(self) -> bool:
        return self.adaptive_threshold is not None


def variant_name(euler_steps: int, num_samples: int = 1, seeded: bool = False) -> str:
    name = f"act_k{euler_steps}" + (f"_best_of_{num_samples}" if num_samples > 1 else "")
    return name + ("_seeded" if seeded else "")


def plan_signatures(budgets: Sequence[int], best_of: Sequence[Tuple[int, int]],
                    default_euler_steps: int, adaptive: Optional[Tuple[int, float]] = None
                    ) -> List[SignatureVariant]:
    """All variants, each with its seeded twin; serving_default last (k = default_euler_steps, N = 1).

    `budgets` are Euler step counts (ints >= 1), `best_of` (k, N) pairs with N >= 2. The default
    budget is always exported as act_k{default} too, so serving_default has a seeded twin.
    `adaptive` = (max_euler_steps, threshold) adds act_adaptive and act_adaptive_seeded.
    """
    for k in list(budgets) + [default_euler_steps] + [k for k, _ in best_of]:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"Euler budget {k!r} must be an int >= 1")
    for k, n in best_of:
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"best_of=({k}, {n!r}): the number of candidates must be an int >= 2")
    pairs = sorted(set([(k, 1) for k in budgets] + [(default_euler_steps, 1)] + list(best_of)))
    variants = [SignatureVariant(variant_name(k, n, seeded), k, n, seeded)
                for k, n in pairs for seeded in (False, True)]
    if adaptive is not None:
        max_euler_steps, threshold = adaptive
        if not isinstance(max_euler_steps, int) or max_euler_steps < 1 or max_euler_steps & (max_euler_steps - 1):
            raise ValueError(f"adaptive max_euler_steps={max_euler_steps!r} must be a power of two (1, 2, 4, ...)")
        variants += [SignatureVariant(ADAPTIVE_SIGNATURE + ("_seeded" if seeded else ""), max_euler_steps,
                                      1, seeded, float(threshold)) for seeded in (False, True)]
    variants.append(SignatureVariant(DEFAULT_SIGNATURE, default_euler_steps, 1, False))
    return variants


def make_signature_function(agent, variant: SignatureVariant, obs_dim: int, action_dim: int,
                            noise_stream: Optional[NoiseStream], jit_compile: bool = False,
                            cap_step_level: bool = False) -> tf.types.experimental.PolymorphicFunction:
    """A tf.function with a fixed input signature that returns {"actions": [batch, A]} (and
    "steps_used" [batch] for the adaptive policy).

    With jit_compile a plain signature is one XLA computation, noise included; a seeded one
    compiles the sampling but not its noise (see the module docstring). The adaptive policy is
    never compiled (its row selection has data-dependent shapes). cap_step_level: see agent.act.
    """
    k, n = variant.euler_steps, variant.num_samples
    if variant.adaptive:
        from models import adaptive  # only exports that ask for act_adaptive need it

        def sample(observations, noise):
            actions, steps_used = adaptive.adaptive_act(
                agent, observations, noise=noise, max_euler_steps=k, threshold=variant.adaptive_threshold,
                cap_step_level=cap_step_level)
            return {"actions": actions, "steps_used": steps_used}

        jit_compile = False
    else:
        def sample(observations, noise):
            return {"actions": agent.act(observations, euler_steps=k, num_samples=n, noise=noise,
                                         cap_step_level=cap_step_level)}

    observations_spec = tf.TensorSpec([None, obs_dim], tf.float32, name="observations")
    if variant.seeded:
        compiled_sample = tf.function(sample, jit_compile=jit_compile)

        def act_seeded(observations, seed):
            return compiled_sample(observations, row_seeded_noise(seed, n, action_dim))

        return tf.function(act_seeded, input_signature=[
            observations_spec, tf.TensorSpec([None], tf.int64, name="seed")])

    def act_fresh(observations):
        return sample(observations, fresh_noise(tf.shape(observations)[0], n, action_dim, noise_stream,
                                                compiled=jit_compile))

    return tf.function(act_fresh, input_signature=[observations_spec], jit_compile=jit_compile)


def make_signatures(agent, variants: Sequence[SignatureVariant], obs_dim: int, action_dim: int,
                    jit_compile: bool = False, noise_stream: Optional[NoiseStream] = None,
                    cap_step_level: bool = False) -> Dict[str, tf.types.experimental.PolymorphicFunction]:
    """Signature name -> tf.function; serving_default shares act_k{default}'s function.

    With jit_compile the plain signatures draw from `noise_stream` (a new NoiseStream if None);
    whatever saves the functions must track it (serving/export.py's module does).
    """
    if noise_stream is None:
        noise_stream = new_noise_stream(jit_compile)
    functions = {}
    for variant in variants:
        twin = variant_name(variant.euler_steps, variant.num_samples, variant.seeded)
        if variant.name == DEFAULT_SIGNATURE and twin in functions:
            functions[variant.name] = functions[twin]
        else:
            functions[variant.name] = make_signature_function(agent, variant, obs_dim, action_dim,
                                                              noise_stream, jit_compile, cap_step_level)
    return functions


def loaded_function(loaded, name: str):
    """Signature `name` of a `tf.saved_model.load`ed model, called the fastest way it can be.

    Returns a callable taking the signature's inputs as keyword arguments and returning its
    outputs as a dict by alias, like `loaded.signatures[name]`. This project's exports also save
    every signature's function as a module attribute (serving/export.py); the concrete function
    behind it runs that function directly (one XLA launch for a jit_compile export), where
    `loaded.signatures[name]` first goes through a graph wrapper and `loaded.<name>(...)` through
    tf.function's dispatch, each a fixed cost per call (BENCHMARKS.md).
    Any other SavedModel, or an attribute whose inputs or outputs differ from the SignatureDef's,
    gets the signature itself.
    """
    signature = loaded.signatures[name]
    concrete = getattr(getattr(loaded, name, None), "concrete_functions", None)
    if not concrete or len(concrete) != 1:
        return signature
    concrete = concrete[0]
    args, kwargs = concrete.structured_input_signature
    specs = list(args) + list(kwargs.values())
    parameters = list(concrete.function_type.parameters)  # the keywords it is called with
    if len(parameters) != len(specs):
        return signature
    inputs = dict(zip(parameters, specs))
    wanted = signature.structured_input_signature[1]
    outputs = concrete.structured_outputs
    if (set(inputs) != set(wanted)
            or any(inputs[alias].dtype != spec.dtype or inputs[alias].shape != spec.shape
                   for alias, spec in wanted.items())
            or not isinstance(outputs, dict) or set(outputs) != set(signature.structured_outputs)):
        return signature
    return concrete

"""sorl-tf and the authors' JAX SORL trained side by side on the same data, one process per core.

    python -m bench.bench_side_by_side --raw=artifacts/raw --data=artifacts/data/cube-single-play-v0 \
        --reference_repo=/tmp/sorl-reference --reference_python=/tmp/jaxref/bin/python \
        --task=2 --seeds=0,1 --steps=100000 --eval_every=25000 --eval_episodes=50 --out=artifacts/side_by_side

For each seed, ours (`pipeline/train.py --env=cube`) and the reference (its own unmodified `main.py`,
in its own venv, as bench/bench_reference_jax.py describes) train at once, each pinned to one core
with one compute thread, on the same network size and gradient steps; the next seed swaps the cores.
Both read the same play data: ours the TFRecords converted from `--raw`'s OGBench npz files, the
reference those npz files (linked into a private HOME's ~/.ogbench/data, where ogbench looks for them).
Both evaluate with N = 1 at every `--eval_every` steps (50 episodes per k in {1, 2, 4, 8}), then at
the last step with N in `--candidates`: ours with pipeline/evaluate.py, the reference by its main.py
restoring its last save and running one more gradient step, the only way its script evaluates a saved
agent. Reruns skip what is done: ours resumes from its checkpoints; the reference saves every
--eval_every steps and an interrupted run goes on from its last save with its own --restore_path flag,
in a folder of its own (reference-sSEED-fromSTEP). Its script then samples batches from the seed's
numpy stream again, so a resumed stretch reuses the first stretch's batch order; the agent's networks,
optimiser and random key come back whole. `--codes=reference --cores=0` and `--codes=ours --cores=1` in two
invocations with the same --out lay the runs out differently (the reference's seeds on one core, ours
on the other); `--codes=` only rewrites the table from what is there.

Written to --out: logs/, summary.csv (code, evaluation, seed, step, k, N, success), side_by_side.md (the final
table, mean +- std over seeds, and wall time per 1k gradient steps) and learning_curves.png.
The table's best-of-N rows and its 'final' N = 1 row come from that one last evaluation, so they share
start states; the 'training' N = 1 row is the learning curve's last point.
"""

import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from data import envs, files

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (1, 2, 4, 8)
REFERENCE_ENV = "cube-single-play-singletask-task{task}-v0"
DATASET = "cube-single-play-v0"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", required=True, help="folder with cube-single-play-v0.npz and -val.npz")
    p.add_argument("--data", required=True, help="the same data converted to TFRecords (pipeline/preprocess.py)")
    p.add_argument("--reference_repo", required=True, help="checkout of the authors' SORL code")
    p.add_argument("--reference_python", required=True, help="python of the reference's venv")
    p.add_argument("--task", type=int, default=2)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--eval_every", type=int, default=25_000)
    p.add_argument("--eval_episodes", type=int, default=50)
    p.add_argument("--candidates", default="1,4,16", help="N of the final best-of-N evaluation")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--codes", default="ours,reference",
                   help="which code to train: both (each seed's pair at once, one per core), or one of them "
                        "(its seeds in turn on the first of --cores; run another invocation for the other code "
                        "on the other core); empty: only summarise what is under --out")
    p.add_argument("--cores", default="0,1", help="the cores to pin the processes to")
    p.add_argument("--ours_set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra train.py --set for ours, e.g. update_rule=reference for the authors' update rule "
                        "(use another --out: the table does not tell such runs apart)")
    p.add_argument("--out", default="artifacts/side_by_side")
    return p.parse_args(argv)


def ours_train_command(args, seed: int, workdir: Path) -> list:
    dims = ",".join([str(args.width)] * args.depth)
    return [sys.executable, "-m", "pipeline.train", "--env=cube", f"--task={args.task}", f"--seed={seed}",
            f"--steps={args.steps}", f"--eval_every={args.eval_every}", f"--eval_episodes={args.eval_episodes}",
            f"--checkpoint_every={args.eval_every}", f"--data={args.data}", f"--workdir={workdir}",
            f"--set=actor_hidden_dims={dims}", f"--set=critic_hidden_dims={dims}", "--no_progress", "--no_export"] + [
                f"--set={item}" for item in args.ours_set]


def reference_command(args, seed: int, save_dir: Path, steps: int, eval_every: int, candidates: str,
                      restore: tuple | None = None, evaluate_first: bool = False) -> list:
    """The reference's main.py training `steps` updates, from scratch or from restore = (run dir, epoch)
    of one of its saves; evaluate_first adds an evaluation after the first update (its script's only
    way to evaluate a saved agent: restore it, train one step, evaluate over `candidates`)."""
    command = [args.reference_python, "main.py", "--agent=agents/sorl.py",
               f"--env_name={REFERENCE_ENV.format(task=args.task)}", f"--seed={seed}",
               f"--offline_steps={steps}", f"--eval_interval={eval_every}", f"--eval_episodes={args.eval_episodes}",
               f"--save_interval={args.eval_every}", f"--log_interval={min(5000, steps)}", f"--save_dir={save_dir}",
               "--track=False", f"--agent.actor_layer_size={args.width}", f"--agent.actor_num_layers={args.depth}",
               f"--agent.value_layer_size={args.width}", f"--agent.value_num_layers={args.depth}",
               f"--agent.best_of_n_sweep=({candidates},)"] + reference_preset()
    if restore is not None:
        command += [f"--restore_path={restore[0]}", f"--restore_epoch={restore[1]}"]
    return command + [f"--debug={not evaluate_first}"]  # --debug=True skips the evaluation at step 1


def reference_preset() -> list:
    """cube-single's preset as main.py flags: its agent defaults q_loss_coef to 100, and the authors'
    README passes --agent.q_loss_coef=10 for cube-single (ours: data/envs.py, SPEC section 5)."""
    family = envs.resolve_env("cube-single")
    return [f"--agent.q_loss_coef={family.q_loss_coef:g}", f"--agent.discount={family.discount:g}",
            f"--agent.q_agg={family.q_agg}"]


def pinned(command: list, core: str) -> list:
    return ["taskset", "-c", core] + command


def ours_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
                TF_CPP_MIN_LOG_LEVEL="2")


def reference_env(home: Path, raw: Path) -> dict:
    """A private HOME whose ~/.ogbench/data holds links to our npz files (ogbench reads them from
    there instead of downloading), and one XLA compute thread."""
    data_dir = home / ".ogbench" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in (f"{DATASET}.npz", f"{DATASET}-val.npz"):
        link = data_dir / name
        if not link.exists():
            link.symlink_to((raw / name).resolve())
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYTHONPATH")}
    return dict(env, HOME=str(home), WANDB_MODE="disabled", WANDB_SILENT="true",
                XLA_FLAGS="--xla_cpu_multi_thread_eigen=false")


def reference_run_dir(save_root: Path) -> Path | None:
    """main.py nests its output as SAVE_DIR/PROJECT/GROUP/EXP_NAME: the one folder with a flags.json."""
    found = sorted(save_root.glob("**/flags.json"))
    return found[-1].parent if found else None


def reference_segments(out: Path, seed: int) -> list:
    """(first step, run dir) of each stretch of the reference's run for `seed` that main.py started, in
    order: the first from scratch in reference-sSEED, each later one in reference-sSEED-fromSTEP,
    restored from a save."""
    folders = [(0, out / f"reference-s{seed}")]
    for path in out.glob(f"reference-s{seed}-from*"):
        match = re.fullmatch(rf"reference-s{seed}-from(\d+)", path.name)
        if match:
            folders.append((int(match.group(1)), path))
    return sorted((start, run) for start, folder in folders if (run := reference_run_dir(folder)) is not None)


def reference_last_save(out: Path, seed: int):
    """(absolute step, run dir, the epoch main.py numbered it) of the latest save, or None."""
    saves = []
    for start, run in reference_segments(out, seed):
        for path in run.glob("params_*.pkl"):
            match = re.fullmatch(r"params_(\d+)\.pkl", path.name)
            if match:
                saves.append((start + int(match.group(1)), run, int(match.group(1))))
    return max(saves) if saves else None


def reference_next_segment(out: Path, seed: int, steps: int):
    """Where the reference's training goes on: (first step, folder, restore or None), or None when its
    save at `steps` exists. The folder is cleared by the caller: what it holds is an unfinished stretch."""
    save = reference_last_save(out, seed)
    if save is not None and save[0] >= steps:
        return None
    if save is None:
        return 0, out / f"reference-s{seed}", None
    return save[0], out / f"reference-s{seed}-from{save[0]}", save[1:]


def run_pair(jobs: list, log_dir: Path) -> None:
    """Starts (name, command, env, cwd) jobs at once, waits for all, raises if any failed."""
    running = []
    for name, command, env, cwd in jobs:
        log = open(log_dir / f"{name}.log", "a")
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        running.append((name, subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT), log))
        print(f"started {name} (pid {running[-1][1].pid}); log {log_dir / (name + '.log')}", flush=True)
    failed = []
    try:
        for name, process, log in running:
            if process.wait():
                failed.append(f"{name} exited {process.returncode}")
            log.close()
    finally:
        for _, process, _ in running:
            if process.poll() is None:
                process.kill()
    if failed:
        raise SystemExit(f"bench_side_by_side: {'; '.join(failed)}; see {log_dir}")


def read_csv(path: Path) -> list:
    if not path.exists():
        return []
    with open(path) as handle:
        return list(csv.DictReader(handle))


def ours_rows(seed: int, workdir: Path) -> list:
    rows = [dict(code="sorl-tf", evaluation="training", seed=seed, step=int(r["step"]), k=int(r["steps_k"]),
                 N=int(r["num_samples"]), success=float(r["success_rate"])) for r in read_csv(workdir / "eval.csv")]
    final = read_csv(workdir / "scaling" / "scaling.csv")
    step = max((r["step"] for r in rows), default=0)
    rows += [dict(code="sorl-tf", evaluation="final", seed=seed, step=step, k=int(r["k"]), N=int(r["N"]),
                  success=float(r["success_rate"])) for r in final if r.get("policy", "fixed") == "fixed"]
    return rows


def reference_rows(seed: int, out: Path, steps: int) -> list:
    """Its eval.csv columns 'evaluation/n=N/success' (k = 1) and 'eval_inference_K/n=N/success', with
    each stretch's steps counted from where it started; an evaluation that a later stretch repeated
    (the run stopped between evaluating and saving) is taken from the later one."""
    rows = []
    segments = reference_segments(out, seed)
    ends = [start for start, _ in segments[1:]] + [steps]
    runs = [(run, start, end, False) for (start, run), end in zip(segments, ends)]
    runs.append((reference_run_dir(out / f"reference-s{seed}-final"), 0, steps, True))
    for run_dir, start, end, final in runs:
        for r in read_csv(run_dir / "eval.csv") if run_dir else []:
            step = steps if final else start + int(float(r["step"]))
            if step > end:
                continue
            for key, value in r.items():
                parts = key.split("/")
                if len(parts) != 3 or parts[2] != "success" or not parts[1].startswith("n=") or value == "":
                    continue
                k = 1 if parts[0] == "evaluation" else int(parts[0].removeprefix("eval_inference_"))
                n = int(parts[1][2:])
                rows.append(dict(code="reference", evaluation="final" if final else "training", seed=seed,
                                 step=step, k=k, N=n, success=float(value)))
    return rows


def seconds_per_1k(code: str, seed: int, out: Path):
    """Median over log windows of the wall time per 1k gradient steps (evaluation windows excluded by the median)."""
    if code == "sorl-tf":
        rates = [float(r["perf/steps_per_second"]) for r in read_csv(out / f"ours-s{seed}" / "metrics.csv")
                 if r.get("perf/steps_per_second")]
        return 1000 / statistics.median(rates) if rates else None
    times = []
    for _, run in reference_segments(out, seed):
        times += [float(r["time/first_last_over_log_time"]) for r in read_csv(run / "train.csv")]
    return 1000 * statistics.median(times) if times else None


def summarise(rows: list, walls: dict, args, out: Path) -> None:
    files.write_csv(out / "summary.csv", rows, ["code", "evaluation", "seed", "step", "k", "N", "success"])
    lines = [f"Task {args.task}, {args.steps} gradient steps, {args.depth} x {args.width} networks, "
             f"{args.eval_episodes} episodes per cell; success % as mean +- std over seeds "
             f"{','.join(str(s) for s in sorted({r['seed'] for r in rows}))} (per-seed values in brackets). "
             "'training' is the learning curve's last point; 'final' is one later evaluation of the last "
             "save over every N, so its N = 1 row is the one to compare best-of-N with (other start states).",
             "", "| code | evaluation | N | " + " | ".join(f"k={k}" for k in BUDGETS) + " | s per 1k steps |",
             "|---|---|---|" + "---|" * len(BUDGETS) + "---|"]
    for code in ("sorl-tf", "reference"):
        cases = [("training", 1)] + [("final", n) for n in sorted(
            {r["N"] for r in rows if r["code"] == code and r["evaluation"] == "final"})]
        for evaluation, n in cases:
            cells = []
            for k in BUDGETS:
                values = [r["success"] * 100 for r in rows if r["code"] == code and r["evaluation"] == evaluation
                          and r["N"] == n and r["k"] == k and r["step"] == args.steps]
                if not values:
                    cells.append("")
                    continue
                spread = f" +- {statistics.stdev(values):.0f}" if len(values) > 1 else ""
                cells.append(f"{statistics.mean(values):.0f}{spread} [{', '.join(f'{v:.0f}' for v in values)}]")
            wall = [w for (c, _), w in walls.items() if c == code and w]
            wall_text = ", ".join(f"{w:.0f}" for w in wall) if evaluation == "training" else ""
            lines.append(f"| {code} | {evaluation} | {n} | " + " | ".join(cells) + f" | {wall_text} |")
    files.write_text(out / "side_by_side.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, args, out / "learning_curves.png")


def plot(rows: list, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(BUDGETS), figsize=(4 * len(BUDGETS), 3.4), sharey=True)
    for axis, k in zip(axes, BUDGETS):
        for code, color in (("sorl-tf", "tab:blue"), ("reference", "tab:orange")):
            curve = [r for r in rows if r["code"] == code and r["evaluation"] == "training" and r["k"] == k
                     and r["N"] == 1]
            for seed in sorted({r["seed"] for r in curve}):
                points = sorted((r["step"], 100 * r["success"]) for r in curve if r["seed"] == seed)
                axis.plot(*zip(*points), color=color, alpha=0.35, marker=".")
            steps = sorted({r["step"] for r in curve})
            means = [statistics.mean(100 * r["success"] for r in curve if r["step"] == s) for s in steps]
            if steps:
                axis.plot(steps, means, color=color, linewidth=2, label=f"{code} (mean of seeds)")
        axis.set_title(f"k = {k}, N = 1")
        axis.set_xlabel("gradient steps")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"success % (task {args.task})")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    files.save_figure(figure, path)
    plt.close(figure)


def train_seed(args, seed: int, core: str, codes: list, out: Path, raw: Path, reference_repo: Path) -> None:
    """Trains and finally evaluates `codes` for one seed; with both codes, `core` is "A,B" (ours, reference)."""
    logs = out / "logs"
    ours_dir = out / f"ours-s{seed}"
    final_root = out / f"reference-s{seed}-final"
    env = reference_env(out / "reference-home", raw)
    ours_core, ref_core = (core.split(",") * 2)[:2]
    jobs = []
    if "ours" in codes:
        jobs.append((f"ours-s{seed}", pinned(ours_train_command(args, seed, ours_dir), ours_core), ours_env(), str(REPO)))
    segment = reference_next_segment(out, seed, args.steps) if "reference" in codes else None
    if segment is not None:
        start, folder, restore = segment
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished stretch: it goes on from the last save
        jobs.append((folder.name, pinned(reference_command(args, seed, folder, args.steps - start, args.eval_every,
                                                           "1", restore=restore), ref_core),
                     env, str(reference_repo)))
    start = time.time()
    run_pair(jobs, logs)
    print(f"seed {seed}: training done in {time.time() - start:.0f} s", flush=True)
    final_jobs = []
    if "ours" in codes and not (ours_dir / "scaling" / "scaling.csv").exists():
        final_jobs.append((f"ours-s{seed}-final", pinned(
            [sys.executable, "-m", "pipeline.evaluate", f"--workdir={ours_dir}", f"--task={args.task}",
             "--euler_steps=" + ",".join(map(str, BUDGETS)), f"--candidates={args.candidates}",
             f"--episodes={args.eval_episodes}", "--no_progress"], ours_core), ours_env(), str(REPO)))
    final_run = reference_run_dir(final_root)
    if "reference" in codes and (final_run is None or not (final_run / "eval.csv").exists()):
        shutil.rmtree(final_root, ignore_errors=True)
        final_jobs.append((f"reference-s{seed}-final", pinned(
            reference_command(args, seed, final_root, 1, 1, args.candidates,
                              restore=reference_last_save(out, seed)[1:], evaluate_first=True),
            ref_core), env, str(reference_repo)))
    if final_jobs:
        run_pair(final_jobs, logs)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    raw, reference_repo = Path(args.raw).resolve(), Path(args.reference_repo).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    codes = [c for c in args.codes.split(",") if c]
    unknown = set(codes) - {"ours", "reference"}
    if unknown:
        raise SystemExit(f"bench_side_by_side: --codes={args.codes}: unknown {sorted(unknown)}; use ours, reference or both")
    cores = args.cores.split(",")
    if codes and args.steps % args.eval_every:
        raise SystemExit(f"bench_side_by_side: --steps={args.steps} is not a multiple of --eval_every="
                         f"{args.eval_every}; the reference saves (and resumes) every --eval_every steps")
    if codes and shutil.which("taskset") is None:
        raise SystemExit("bench_side_by_side: needs taskset (util-linux) to pin each process to a core")
    for index, seed in enumerate(seeds):
        if not codes:
            break
        if len(codes) == 2:  # the pair at once, one per core; the next seed swaps the cores
            pair = cores if index % 2 == 0 else cores[::-1]
            train_seed(args, seed, ",".join(pair), codes, out, raw, reference_repo)
        else:  # one code: its seeds one after the other on the first core given
            train_seed(args, seed, cores[0], codes, out, raw, reference_repo)
    # The table covers every finished run under --out, also those another invocation trained.
    rows, walls = [], {}
    seeds_found = {int(m.group(1)) for p in out.iterdir() if p.is_dir()
                   for m in [re.fullmatch(r"(?:ours|reference)-s(\d+)(?:-.*)?", p.name)] if m}
    for seed in sorted(seeds_found):
        rows += ours_rows(seed, out / f"ours-s{seed}") + reference_rows(seed, out, args.steps)
        walls[("sorl-tf", seed)] = seconds_per_1k("sorl-tf", seed, out)
        walls[("reference", seed)] = seconds_per_1k("reference", seed, out)
    summarise(rows, walls, args, out)


if __name__ == "__main__":
    main()

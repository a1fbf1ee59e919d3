"""`python pipeline/evaluate.py`: the budget grid from a checkpoint and from its export, diagnostics.

A tiny untrained agent in the real cube-single env, short episodes: what is checked is the
machinery (files, counts, agreement between sources, determinism), not the policy's skill.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf  # noqa: F401  (TF before MuJoCo)

from models import checkpoints
from models.sorl import SORLAgent
from pipeline import evaluate, scaling
from pipeline.config import make_run_config, save_run_config

ROOT = Path(__file__).resolve().parents[2]
EPISODE_LENGTH = 6
GRID = ["--task=2", "--euler_steps=1,2", "--candidates=1,2", "--episodes=3", "--num_envs=2",
        f"--episode_length={EPISODE_LENGTH}", "--seed=7", "--no_progress", "--vectorization=sync"]
TIMING_COLUMNS = {"policy_ms_per_action", "policy_ms_per_call", "wall_seconds"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as train.py leaves it: config.json, a checkpoint, and export/1 with the
    budgets the grid below uses (act_k1, act_k2, act_k1_best_of_2, act_k2_best_of_2 + seeded twins)."""
    from serving.export import export_saved_model

    workdir = tmp_path_factory.mktemp("evaluate_run") / "run"
    config = make_run_config("cube", {"actor_hidden_dims": (16, 16), "critic_hidden_dims": (16, 16), "seed": 5,
                                      "episode_length": EPISODE_LENGTH})
    agent = SORLAgent(config.agent, 28, 5)
    save_run_config(str(workdir), config, 28, 5, data_dir="", strategy="default")
    # the step variable pipeline/training.py checkpoints with
    manager = checkpoints.make_checkpoint_manager(agent, str(workdir), agent.actor_optimizer.iterations)
    manager.save()
    export_saved_model(agent, str(workdir / "export"), budgets=(1, 2), best_of=((1, 2), (2, 2)), verify=False)
    return workdir


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def test_checkpoint_grid_writes_csv_and_plots(run_dir, tmp_path):
    out = tmp_path / "grid"
    evaluate.main([f"--workdir={run_dir}", *GRID, "--adaptive_threshold=0,0.01",
                             "--adaptive_max_steps=4", f"--output={out}"])
    rows = scaling.read_csv(out / "scaling.csv")
    assert list(rows[0]) == list(scaling.CSV_COLUMNS)
    assert [(r["policy"], r["k"], r["N"], r["threshold"]) for r in rows] == [
        ("fixed", "1", "1", ""), ("fixed", "1", "2", ""), ("fixed", "2", "1", ""), ("fixed", "2", "2", ""),
        ("adaptive", "4", "1", "0"), ("adaptive", "4", "1", "0.01")]
    for r in rows:
        assert r["task"] == "2" and r["episodes"] == "3" and r["seed"] == "7"
        assert 0.0 <= float(r["success_ci_low"]) <= float(r["success_rate"]) <= float(r["success_ci_high"]) <= 1.0
        assert float(r["mean_return"]) >= -EPISODE_LENGTH
    for name in ("success_vs_k.png", "success_vs_N.png", "success_vs_compute.png"):
        assert (out / name).stat().st_size > 1000


def test_same_seed_same_numbers_and_export_agrees_with_checkpoint(run_dir, tmp_path):
    """The export's seeded signatures draw the noise the checkpoint policy draws: same numbers."""
    main_rows = []
    for name, source in (("a", f"--workdir={run_dir}"), ("b", f"--workdir={run_dir}"),
                         ("export", f"--saved_model={run_dir / 'export'}")):
        evaluate.main([source, *GRID, f"--output={tmp_path / name}"])
        main_rows.append(strip_timing(scaling.read_csv(tmp_path / name / "scaling.csv")))
    assert main_rows[0] == main_rows[1]
    assert main_rows[2] == main_rows[0]


def test_saved_model_without_the_budget_is_a_clear_error(run_dir, tmp_path):
    # the export has k in {1, 2, 4 (inference_euler_steps, serving_default)}, not 8
    with pytest.raises(SystemExit, match=r"no signature for \['act_k8'\].*--workdir"):
        evaluate.main([f"--saved_model={run_dir / 'export' / '1'}", "--euler_steps=1,8", "--candidates=1",
                       "--episodes=1", f"--output={tmp_path}"])
    with pytest.raises(SystemExit, match="adaptive_threshold needs --workdir"):
        evaluate.main([f"--saved_model={run_dir / 'export'}", "--euler_steps=1", "--candidates=1",
                       "--adaptive_threshold=0", "--episodes=1", f"--output={tmp_path}"])


def test_cap_step_level_is_for_checkpoints_only(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="--cap_step_level applies to --workdir.*export.py --cap_step_level"):
        evaluate.main([f"--saved_model={run_dir / 'export' / '1'}", "--euler_steps=16", "--candidates=1",
                       "--cap_step_level", f"--output={tmp_path}"])


def test_diagnostics_q_against_returns_and_td_error(run_dir, cube_tfrecord_dir, tmp_path):
    out = tmp_path / "diag"
    evaluate.main([f"--workdir={run_dir}", "--diagnostics_only", "--task=2", "--episodes=2", "--num_envs=2",
                   f"--episode_length={EPISODE_LENGTH}", "--diagnostics_steps=2", f"--data={cube_tfrecord_dir}",
                   "--vectorization=sync", "--no_progress", f"--output={out}"])
    assert not (out / "scaling.csv").exists()
    (summary,) = json.loads((out / "diagnostics.json").read_text())
    pairs = list(csv.DictReader(open(out / "q_vs_return_task2.csv")))
    assert summary["transitions"] == len(pairs)
    # An untrained agent does not solve the task in 6 steps: every state scores -1, so the
    # Monte-Carlo return t steps before the end is -(1 - 0.99^(6 - t)) / (1 - 0.99).
    for p in pairs:
        remaining = EPISODE_LENGTH - int(p["t"])
        assert float(p["mc_return"]) == pytest.approx(-(1 - 0.99 ** remaining) / 0.01, abs=1e-4)
    assert len(pairs) == 2 * EPISODE_LENGTH
    for key in ("pearson_q_vs_return", "spearman_q_vs_return"):
        assert -1.0 <= summary[key] <= 1.0
    assert summary["pearson_successful_episodes"] is None  # no successful episode: undefined, JSON null
    metadata = json.loads((Path(cube_tfrecord_dir) / "metadata.json").read_text())
    assert summary["td_transitions"] == metadata["counts"]["val"]  # every validation transition
    assert np.isfinite(summary["td_error_rmse"]) and summary["td_error_rmse"] >= abs(summary["td_error_mean"])
    assert (out / "q_vs_return_task2.png").stat().st_size > 1000
    # The budget input's ranking over every level the run trained (m_btt), on up to 1,024 validation states.
    levels = [str(2**i) for i in range(int(json.loads((run_dir / "config.json").read_text())["agent"]["m_btt"]).bit_length())]
    assert summary["budget_states"] == min(1024, metadata["counts"]["val"])
    assert list(summary["q_mean_at_own_k"]) == levels and list(summary["doubled_wins_same_level"]) == levels[:-1]
    assert all(0.0 <= v <= 1.0 for v in summary["doubled_wins_across_levels"].values())


def test_diagnostics_need_a_checkpoint(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="--diagnostics needs the critic: pass --workdir"):
        evaluate.main([f"--saved_model={run_dir / 'export'}", "--diagnostics_only", f"--output={tmp_path}"])


def test_command_line_runs_with_worker_processes(run_dir, tmp_path):
    """The entry script as a user runs it, with async vector envs (forkserver workers import it)."""
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "pipeline" / "evaluate.py"), f"--workdir={run_dir}", "--task=2",
         "--euler_steps=1", "--candidates=1", "--episodes=2", "--num_envs=2", "--episode_length=3",
         "--vectorization=async", f"--output={out}"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = scaling.read_csv(out / "scaling.csv")
    assert len(rows) == 1 and rows[0]["k"] == "1" and rows[0]["episodes"] == "2"
    assert "task 2" in proc.stderr  # the progress bar


def test_bad_flags_are_clear_errors(tmp_path, capsys):
    for argv, message in ((["--workdir=x", "--task=9"], "tasks are 1..5"),
                          (["--workdir=x", "--euler_steps=1,zero"], "comma-separated integers"),
                          (["--workdir=x", "--steps=1,zero"], "--steps='1,zero': expected comma-separated"),
                          (["--workdir=x", "--steps=1", "--euler_steps=2"], "pass only --euler_steps"),
                          (["--task=2"], "one of the arguments --workdir --saved_model --merge is required")):
        with pytest.raises(SystemExit):
            evaluate.parse_args(argv)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--saved_model: .*no saved_model.pb"):
        evaluate.main([f"--saved_model={tmp_path}", f"--output={tmp_path / 'out'}"])


def test_steps_is_a_deprecated_spelling_of_euler_steps(capsys):
    args = evaluate.parse_args(["--workdir=x", "--steps=1,4"])
    assert args.euler_steps == [1, 4]
    err = capsys.readouterr().err
    assert err == "evaluate.py: --steps is deprecated (it means Euler steps): use --euler_steps\n"
    assert evaluate.parse_args(["--workdir=x"]).euler_steps == [1, 2, 4, 8, 16, 32]
    assert evaluate.parse_args(["--workdir=x", "--euler_steps=2,8"]).euler_steps == [2, 8]
    assert capsys.readouterr().err == ""


def test_deprecated_steps_flag_runs_the_same_grid(run_dir, tmp_path, capsys):
    old = [a.replace("--euler_steps=", "--steps=") for a in GRID]
    assert old != GRID
    evaluate.main([f"--workdir={run_dir}", *old, f"--output={tmp_path / 'old'}"])
    assert "--steps is deprecated" in capsys.readouterr().err
    evaluate.main([f"--workdir={run_dir}", *GRID, f"--output={tmp_path / 'new'}"])
    assert (strip_timing(scaling.read_csv(tmp_path / "old" / "scaling.csv"))
            == strip_timing(scaling.read_csv(tmp_path / "new" / "scaling.csv")))


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    """Two run directories as train.py leaves them, one per training seed (5 on task 1, 6 on task 2), each
    with checkpoints at steps 100 and 200 (the weights moved in between, so the two differ)."""
    root = tmp_path_factory.mktemp("seed_runs")
    runs = []
    for seed, task in ((5, 1), (6, 2)):
        workdir = root / f"run-s{seed}"
        config = make_run_config("cube", {"actor_hidden_dims": (16, 16), "critic_hidden_dims": (16, 16),
                                          "seed": seed, "task": task, "episode_length": EPISODE_LENGTH})
        agent = SORLAgent(config.agent, 28, 5)
        save_run_config(str(workdir), config, 28, 5, data_dir="", strategy="default")
        step = agent.actor_optimizer.iterations
        manager = checkpoints.make_checkpoint_manager(agent, str(workdir), step)
        for value in (100, 200):
            step.assign(value)
            for weight in agent.actor.trainable_weights:
                weight.assign(weight + 0.1)
            manager.save(checkpoint_number=value)
        runs.append(workdir)
    return runs


PROTOCOL = ["--protocol=paper", "--euler_steps=1,2", "--episodes=2", "--num_envs=2", "--vectorization=sync",
            f"--episode_length={EPISODE_LENGTH}", "--no_progress"]


def test_paper_protocol_over_two_seeds_and_their_last_two_checkpoints(seed_runs, tmp_path, capsys):
    """Each run on its own task: one seed per task, so the cells are "x % [lo, hi]" and there is no mean
    column (no seed has both tasks); with --task=1,2 both seeds run both tasks: "mean ± std" and a mean."""
    out = tmp_path / "own"
    evaluate.main([f"--workdir={seed_runs[0]},{seed_runs[1]}", "--last_checkpoints=2", *PROTOCOL, f"--output={out}"])
    assert not (out / "scaling.csv").exists()  # several sources: the protocol's files only
    rows = scaling.read_csv(out / "protocol_rows.csv")
    assert [(Path(r["run"]).name, r["train_seed"], r["checkpoint_step"], r["task"], r["k"]) for r in rows] == [
        ("run-s5", "5", "100", "1", "1"), ("run-s5", "5", "100", "1", "2"),
        ("run-s5", "5", "200", "1", "1"), ("run-s5", "5", "200", "1", "2"),
        ("run-s6", "6", "100", "2", "1"), ("run-s6", "6", "100", "2", "2"),
        ("run-s6", "6", "200", "2", "1"), ("run-s6", "6", "200", "2", "2")]
    assert {r["N"] for r in rows} == {"1"} and {r["episodes"] for r in rows} == {"2"}
    table = (out / "paper_table.md").read_text()
    assert table.splitlines()[4:6] == ["| budget | task 1 | task 2 |", "|---|---|---|"]
    assert [line.split(" | ")[0] for line in table.splitlines()[6:]] == ["| k=1", "| k=2"]
    assert "%" in table.splitlines()[6] and "±" not in "".join(table.splitlines()[4:])
    assert table in capsys.readouterr().out

    out = tmp_path / "all"
    evaluate.main([f"--workdir={seed_runs[0]}", f"--workdir={seed_runs[1]}", "--last_checkpoints=2", "--task=1,2",
                   *PROTOCOL, "--euler_steps=1", "--candidates=1,2", f"--output={out}"])
    summary = scaling.read_csv(out / "paper_summary.csv")
    rows = scaling.read_csv(out / "protocol_rows.csv")
    assert len(rows) == 2 * 2 * 2 * 2  # runs x checkpoints x tasks x (k, N)
    for r in (r for r in summary if r["scope"] == "seeds"):
        seed_rates = [float(s["success_rate"]) for s in summary
                      if s["scope"] == "seed" and (s["task"], s["k"], s["N"]) == (r["task"], r["k"], r["N"])]
        assert len(seed_rates) == 2 and r["seeds"] == "2" and r["checkpoints"] == "2"
        assert float(r["success_rate"]) == pytest.approx(np.mean(seed_rates), abs=1e-5)
        assert float(r["success_std"]) == pytest.approx(np.std(seed_rates, ddof=1), abs=1e-5)
    table = (out / "paper_table.md").read_text().splitlines()
    assert table[4] == "| budget | task 1 | task 2 | mean |"
    assert [line.split(" | ")[0] for line in table[6:]] == ["| k=1", "| k=1, N=2"]
    assert all(line.count("±") == 3 for line in table[6:])
    assert (out / "paper_success_vs_k.png").stat().st_size > 1000


def test_paper_protocol_on_one_checkpoint_keeps_scaling_csv(run_dir, tmp_path):
    out = tmp_path / "one"
    evaluate.main([f"--workdir={run_dir}", *PROTOCOL, "--adaptive_threshold=0", "--adaptive_max_steps=2",
                   "--adaptive_compare=across_levels,same_level", f"--output={out}"])
    rows = scaling.read_csv(out / "scaling.csv")
    assert list(rows[0]) == list(scaling.CSV_COLUMNS)
    assert [(r["policy"], r["k"], r["N"]) for r in rows] == [
        ("fixed", "1", "1"), ("fixed", "2", "1"), ("adaptive", "2", "1"), ("adaptive-same_level", "2", "1")]
    table = (out / "paper_table.md").read_text()
    assert "| adaptive k<=2, thr=0 (same level) | " in table and "| task 2 |" in table
    assert (out / "success_vs_compute.png").exists() and (out / "paper_success_vs_k.png").exists()


def test_protocol_flag_errors(seed_runs, run_dir, tmp_path):
    with pytest.raises(SystemExit, match=r"--last_checkpoints: .*has 2 checkpoint\(s\) \(ckpt-100, ckpt-200\); "
                                         r"--last_checkpoints=3 needs 3"):
        evaluate.main([f"--workdir={seed_runs[0]}", "--last_checkpoints=3", *PROTOCOL, f"--output={tmp_path}"])
    with pytest.raises(SystemExit, match="--checkpoint names one checkpoint of one run"):
        evaluate.main([f"--workdir={seed_runs[0]},{seed_runs[1]}", "--checkpoint=x", *PROTOCOL, f"--output={tmp_path}"])
    with pytest.raises(SystemExit, match="more than once"):
        evaluate.main([f"--workdir={seed_runs[0]},{seed_runs[0]}", *PROTOCOL, f"--output={tmp_path}"])
    with pytest.raises(SystemExit, match="--diagnostics measures one checkpoint"):
        evaluate.main([f"--workdir={seed_runs[0]}", "--last_checkpoints=2", "--diagnostics", *PROTOCOL,
                       f"--output={tmp_path}"])
    with pytest.raises(SystemExit, match="--last_checkpoints applies to --workdir"):
        evaluate.main([f"--saved_model={run_dir / 'export'}", "--last_checkpoints=2", *PROTOCOL,
                       f"--output={tmp_path}"])


def test_protocol_defaults_and_adaptive_compare_flag(capsys):
    args = evaluate.parse_args(["--workdir=a,b", "--workdir=c", "--protocol=paper"])
    assert (args.workdir, args.euler_steps, args.candidates, args.episodes, args.task) == (
        ["a", "b", "c"], [1, 2, 4, 8], [1], 50, None)
    args = evaluate.parse_args(["--workdir=a", "--protocol=paper", "--candidates=1,4,16", "--episodes=10"])
    assert (args.candidates, args.episodes, args.adaptive_compare) == ([1, 4, 16], 10, ["across_levels"])
    args = evaluate.parse_args(["--workdir=a"])
    assert (args.euler_steps, args.candidates, args.episodes) == ([1, 2, 4, 8, 16, 32], [1, 2, 4, 8, 16], 50)
    assert evaluate.parse_args(["--workdir=a", "--adaptive_compare=same_level"]).adaptive_compare == ["same_level"]
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--workdir=a", "--adaptive_compare=cap"])
    assert "--adaptive_compare='cap': expected a comma list" in capsys.readouterr().err


def test_paper_protocol_on_an_export(run_dir, tmp_path):
    out = tmp_path / "export"
    evaluate.main([f"--saved_model={run_dir / 'export'}", *PROTOCOL, "--euler_steps=1", f"--output={out}"])
    (seed_row, across) = scaling.read_csv(out / "paper_summary.csv")
    assert (seed_row["scope"], seed_row["train_seed"], seed_row["task"], seed_row["checkpoint_steps"]) == (
        "seed", "5", "2", "")
    assert across["scope"] == "seeds" and "| k=1 | " in (out / "paper_table.md").read_text()
    assert (out / "scaling.csv").exists()

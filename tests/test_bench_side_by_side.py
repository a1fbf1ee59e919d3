"""bench/bench_side_by_side.py's table: runs trained by separate invocations (one code per core) are
merged from the --out folder, each code's CSV layout read as that code writes it."""

import csv
import json

from bench import bench_side_by_side


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def reference_run(root, eval_rows, train_rows=None, saves=()):
    run = root / "dummy" / "Debug" / "sorl_sd000"
    run.mkdir(parents=True)
    (run / "flags.json").write_text(json.dumps({}))
    write_csv(run / "eval.csv", eval_rows)
    if train_rows:
        write_csv(run / "train.csv", train_rows)
    for epoch in saves:
        (run / f"params_{epoch}.pkl").write_bytes(b"")
    return run


def test_summary_merges_both_codes_from_the_out_folder(tmp_path):
    ours = tmp_path / "ours-s0"
    write_csv(ours / "eval.csv", [
        dict(step=step, task=2, steps_k=k, num_samples=1, success_rate=s, mean_return=0, episodes=50, seconds=1)
        for step in (50, 100) for k, s in ((1, 0.1), (4, 0.5 if step == 50 else 0.7))])
    write_csv(ours / "scaling" / "scaling.csv", [
        dict(policy="fixed", k=4, N=n, success_rate=s) for n, s in ((1, 0.66), (4, 0.4))])
    write_csv(ours / "metrics.csv", [{"step": i, "perf/steps_per_second": r} for i, r in ((1, 20.0), (2, 25.0), (3, 40.0))])
    reference_run(tmp_path / "reference-s0",
                  [{"step": 100.0, "evaluation/n=1/success": 0.2, "eval_inference_4/n=1/success": 0.3}],
                  [{"step": 100, "time/first_last_over_log_time": t} for t in (0.08, 0.09, 0.5)])
    reference_run(tmp_path / "reference-s0-final",
                  [{"step": 1.0, "evaluation/n=1/success": 0.9, "eval_inference_4/n=4/success": 0.25}])

    bench_side_by_side.main(["--raw=unused", "--data=unused", "--reference_repo=unused", "--reference_python=unused",
                             "--codes=", "--steps=100", "--out", str(tmp_path)])

    table = (tmp_path / "side_by_side.md").read_text()
    rows = {tuple(line.split(" | ")[:3]): line.split(" | ") for line in table.splitlines() if line.startswith("| ")}
    ours_n1 = rows[("| sorl-tf", "training", "1")]
    assert ours_n1[3] == "10 [10]" and ours_n1[5] == "70 [70]"  # k = 1 and 4 at the last step
    assert ours_n1[-1].startswith("40")  # median of 20, 25, 40 steps/s = 25 -> 40 s per 1k steps
    assert rows[("| sorl-tf", "final", "1")][5] == "66 [66]"  # evaluate.py's own N = 1 cell, beside its N = 4
    assert rows[("| sorl-tf", "final", "4")][5] == "40 [40]"
    reference_n1 = rows[("| reference", "training", "1")]
    assert reference_n1[3] == "20 [20]" and reference_n1[5] == "30 [30]"  # the training run's evaluation
    assert reference_n1[-1].startswith("90")  # median 0.09 s per step
    assert rows[("| reference", "final", "1")][3] == "90 [90]"
    assert rows[("| reference", "final", "4")][5] == "25 [25]"
    assert (tmp_path / "learning_curves.png").stat().st_size > 0


def test_the_reference_trains_with_cube_singles_preset_not_its_agent_defaults(tmp_path):
    # agents/sorl.py defaults q_loss_coef to 100; the authors' README runs cube-single with 10, as ours does.
    args = bench_side_by_side.parse_args(["--raw=r", "--data=d", "--reference_repo=x", "--reference_python=p"])
    for command in (bench_side_by_side.reference_command(args, 0, tmp_path, 100, 50, "1"),
                    bench_side_by_side.reference_command(args, 0, tmp_path, 1, 1, "4", restore=(tmp_path, 100),
                                                        evaluate_first=True)):
        assert {"--agent.q_loss_coef=10", "--agent.discount=0.99", "--agent.q_agg=mean"} <= set(command)


def test_an_interrupted_reference_run_goes_on_from_its_last_save(tmp_path):
    # Stopped after evaluating at 75 but before saving there: the next stretch restores the save at 50
    # (epoch 50 of the first stretch), trains the 50 steps left, and its evaluation at 75 replaces the first's.
    def success(step, value):
        return {"step": float(step), "evaluation/n=1/success": value}

    first = reference_run(tmp_path / "reference-s0", [success(25, 0.1), success(50, 0.2), success(75, 0.3)],
                          saves=(25, 50))
    assert bench_side_by_side.reference_next_segment(tmp_path, 0, 100) == (50, tmp_path / "reference-s0-from50", (first, 50))
    args = bench_side_by_side.parse_args(["--raw=r", "--data=d", "--reference_repo=x", "--reference_python=p",
                                          "--steps=100", "--eval_every=25"])
    command = bench_side_by_side.reference_command(args, 0, tmp_path / "reference-s0-from50", 50, 25, "1", restore=(first, 50))
    assert {f"--restore_path={first}", "--restore_epoch=50", "--offline_steps=50", "--save_interval=25",
            "--debug=True"} <= set(command)

    second = reference_run(tmp_path / "reference-s0-from50", [success(25, 0.6), success(50, 0.8)], saves=(25, 50))
    assert bench_side_by_side.reference_next_segment(tmp_path, 0, 100) is None
    assert bench_side_by_side.reference_last_save(tmp_path, 0) == (100, second, 50)
    rows = bench_side_by_side.reference_rows(0, tmp_path, 100)
    assert sorted((r["step"], r["success"]) for r in rows) == [(25, 0.1), (50, 0.2), (75, 0.6), (100, 0.8)]


def test_a_reference_run_with_no_save_starts_from_scratch(tmp_path):
    reference_run(tmp_path / "reference-s1", [{"step": 10.0, "evaluation/n=1/success": 0.5}])
    assert bench_side_by_side.reference_next_segment(tmp_path, 1, 100) == (0, tmp_path / "reference-s1", None)
    assert bench_side_by_side.reference_next_segment(tmp_path, 2, 100) == (0, tmp_path / "reference-s2", None)


def test_ours_set_reaches_train_py_and_configures_the_authors_update_rule(tmp_path):
    from pipeline.config import make_run_config

    def trained_config(*extra):
        args = bench_side_by_side.parse_args(["--raw=r", "--data=d", "--reference_repo=x", "--reference_python=p",
                                              *extra])
        command = bench_side_by_side.ours_train_command(args, 1, tmp_path)
        return make_run_config("cube", overrides=[c.removeprefix("--set=") for c in command if c.startswith("--set=")])

    config = trained_config("--ours_set=update_rule=reference")
    assert config.agent.update_rule == "reference" and config.agent.actor_hidden_dims == (256, 256, 256)
    assert trained_config().agent.update_rule == "separate"

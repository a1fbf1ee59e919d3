"""pipeline/protocol.py: the paper's aggregation (checkpoints averaged per seed, mean +- std across seeds,
Wilson intervals) on a rows table computed by hand, its markdown table and plot."""

import math

import pytest
import scipy.stats

from pipeline import protocol, scaling


def row(run, seed, step, task, successes, episodes=10, k=1, n=1, policy="fixed", threshold=""):
    return dict(run=run, train_seed=seed, checkpoint_step=step, task=task, policy=policy, k=k, N=n,
                threshold=threshold, episodes=episodes, successes=successes, seed=0)


# Two seeds (runs r0, r1), two checkpoints each (steps 100, 200), tasks 1 and 2, 10 episodes each.
#   r0: task 1 -> 6, 8 successes (rate 0.7, 14/20); task 2 -> 2, 4 (0.3, 6/20); mean 0.5 (20/40)
#   r1: task 1 -> 10, 10 (1.0, 20/20);              task 2 -> 5, 3 (0.4, 8/20); mean 0.7 (28/40)
#   across seeds: task 1 0.85 +- 0.3/sqrt(2); task 2 0.35 +- 0.1/sqrt(2); mean 0.6 +- 0.2/sqrt(2)
ROWS = [
    row("r0", 0, 100, 1, 6), row("r0", 0, 200, 1, 8), row("r0", 0, 100, 2, 2), row("r0", 0, 200, 2, 4),
    row("r1", 1, 100, 1, 10), row("r1", 1, 200, 1, 10), row("r1", 1, 100, 2, 5), row("r1", 1, 200, 2, 3),
]


def wilson(successes, trials):
    ci = scipy.stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    return ci.low, ci.high


def find(summary, scope, task, seed=""):
    (r,) = [r for r in summary
            if r["scope"] == scope and str(r["task"]) == str(task) and str(r["train_seed"]) == str(seed)]
    return r


def test_per_seed_rows_average_checkpoints_with_pooled_wilson():
    summary = protocol.summarise(ROWS)
    for seed, task, rate, successes, episodes in ((0, 1, 0.7, 14, 20), (0, 2, 0.3, 6, 20), (0, "mean", 0.5, 20, 40),
                                                  (1, 1, 1.0, 20, 20), (1, 2, 0.4, 8, 20), (1, "mean", 0.7, 28, 40)):
        r = find(summary, "seed", task, seed)
        assert r["success_rate"] == pytest.approx(rate)
        assert (r["successes"], r["episodes"]) == (successes, episodes)
        assert (r["success_ci_low"], r["success_ci_high"]) == pytest.approx(wilson(successes, episodes), abs=1e-9)
        assert r["checkpoints"] == 2 and r["seeds"] == 1
    assert find(summary, "seed", 1, 0)["checkpoint_steps"] == "100;200"
    assert find(summary, "seed", 1, 0)["runs"] == "r0"


def test_across_seed_rows_are_mean_and_sample_std():
    summary = protocol.summarise(ROWS)
    for task, mean, std in ((1, 0.85, 0.3 / math.sqrt(2)), (2, 0.35, 0.1 / math.sqrt(2)),
                            ("mean", 0.6, 0.2 / math.sqrt(2))):
        r = find(summary, "seeds", task)
        assert r["success_rate"] == pytest.approx(mean)
        assert r["success_std"] == pytest.approx(std)
        assert r["seeds"] == 2 and r["runs"] == "r0;r1" and r["success_ci_low"] == ""
    # order: seed 0's tasks and mean, seed 1's, then across seeds
    assert [(r["scope"], str(r["train_seed"]), str(r["task"])) for r in summary] == [
        ("seed", "0", "1"), ("seed", "0", "2"), ("seed", "0", "mean"),
        ("seed", "1", "1"), ("seed", "1", "2"), ("seed", "1", "mean"),
        ("seeds", "", "1"), ("seeds", "", "2"), ("seeds", "", "mean")]


def test_checkpoints_are_averaged_as_rates_not_pooled():
    """Unequal episodes per checkpoint: the seed's rate is the mean of the checkpoints' rates
    (3/10 and 10/10 -> 0.65), its interval is over the pooled episodes (13/20)."""
    r = find(protocol.summarise([row("r", 0, 1, 2, 3, episodes=10), row("r", 0, 2, 2, 10, episodes=10)]), "seed", 2, 0)
    assert r["success_rate"] == pytest.approx(0.65)
    r = find(protocol.summarise([row("r", 0, 1, 2, 1, episodes=4), row("r", 0, 2, 2, 8, episodes=16)]), "seed", 2, 0)
    assert r["success_rate"] == pytest.approx((0.25 + 0.5) / 2)
    assert (r["success_ci_low"], r["success_ci_high"]) == pytest.approx(wilson(9, 20), abs=1e-9)


def test_a_seed_without_every_task_has_no_mean():
    rows = ROWS[:6]  # r1 evaluated on task 1 only
    summary = protocol.summarise(rows)
    assert [str(r["train_seed"]) for r in summary if r["task"] == "mean"] == ["0", ""]
    assert find(summary, "seeds", "mean")["seeds"] == 1
    assert find(summary, "seeds", "mean")["success_std"] == ""


def test_two_runs_with_one_seed_on_one_task_are_an_error():
    with pytest.raises(ValueError, match=r"runs \['a', 'b'\] all have training seed '0' on task 2"):
        protocol.summarise([row("a", 0, 1, 2, 3), row("b", 0, 1, 2, 4)])


def test_markdown_table_across_seeds_and_for_one_seed():
    extra = [row("r0", 0, 100, t, s, k=2) for t, s in ((1, 9), (2, 1))]
    table = protocol.format_markdown(protocol.summarise(ROWS + extra), "cube: success", "notes")
    assert table.splitlines() == [
        "## cube: success", "", "notes", "",
        "| budget | task 1 | task 2 | mean |",
        "|---|---|---|---|",
        "| k=1 | 85.0 ± 21.2 | 35.0 ± 7.1 | 60.0 ± 14.1 |",
        "| k=2 | 90.0 % [59.6, 98.2] | 10.0 % [1.8, 40.4] | 50.0 % [29.9, 70.1] |",
    ]
    lo, hi = wilson(9, 10)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (59.6, 98.2)
    lo, hi = wilson(10, 20)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (29.9, 70.1)


def test_budget_labels_and_adaptive_rows():
    assert protocol.budget_label(("fixed", 4, 1, "")) == "k=4"
    assert protocol.budget_label(("fixed", 4, 16, "")) == "k=4, N=16"
    assert protocol.budget_label(("adaptive", 8, 1, "0.01")) == "adaptive k<=8, thr=0.01"
    assert protocol.budget_label(("adaptive-same_level", 8, 1, "0")) == "adaptive k<=8, thr=0 (same level)"
    # CSV strings and numbers name the same budget
    assert protocol.budget_key(dict(policy="adaptive", k="8", N="1", threshold="0.010")) == \
        protocol.budget_key(dict(policy="adaptive", k=8, N=1, threshold=0.01))


def test_outputs_written_and_read_back(tmp_path):
    extra = [row(r, s, c, t, 5, k=2) for r, s in (("r0", 0), ("r1", 1)) for c in (100, 200) for t in (1, 2)]
    extra += [row(r, s, c, t, 4, k=1, n=4) for r, s in (("r0", 0), ("r1", 1)) for c in (100, 200) for t in (1, 2)]
    written = protocol.write_outputs(ROWS + extra, tmp_path, "cube-single-play")
    summary = scaling.read_csv(written["summary_csv"])
    assert list(summary[0]) == list(protocol.SUMMARY_COLUMNS)
    assert len(summary) == 3 * 9
    rows = scaling.read_csv(written["protocol_rows"])
    assert list(rows[0]) == list(protocol.ROW_COLUMNS) and len(rows) == len(ROWS) + len(extra)
    text = (tmp_path / "paper_table.md").read_text()
    assert text == written["table_markdown"]
    assert "2 training seed(s) (0, 1); the last 2 checkpoint(s)" in text
    assert "| k=1, N=4 | 40.0 ± 0.0 | 40.0 ± 0.0 | 40.0 ± 0.0 |" in text
    assert (tmp_path / "paper_success_vs_k.png").stat().st_size > 1000


def test_merge_rebuilds_one_table_from_evaluations_run_apart(tmp_path, capsys):
    """Task 1 evaluated in one output folder, task 2 in another: --merge gives the table of all of ROWS."""
    from pipeline import evaluate

    first = scaling.write_csv([r for r in ROWS if r["task"] == 1], tmp_path / "a" / "protocol_rows.csv",
                              protocol.ROW_COLUMNS)
    second = scaling.write_csv([r for r in ROWS if r["task"] == 2], tmp_path / "b" / "protocol_rows.csv",
                               protocol.ROW_COLUMNS)
    out = tmp_path / "merged"
    evaluate.main([f"--merge={first},{second}", f"--output={out}", "--env=cube-double-play"])
    summary = scaling.read_csv(out / "paper_summary.csv")
    for scope, task, seed, rate in (("seed", "mean", "0", 0.5), ("seed", "mean", "1", 0.7),
                                    ("seeds", "1", "", 0.85), ("seeds", "mean", "", 0.6)):
        (r,) = [r for r in summary if (r["scope"], r["task"], r["train_seed"]) == (scope, task, seed)]
        assert float(r["success_rate"]) == pytest.approx(rate)
    assert len(scaling.read_csv(out / "protocol_rows.csv")) == len(ROWS)
    table = (out / "paper_table.md").read_text()
    assert "| budget | task 1 | task 2 | mean |" in table and "cube-double-play" in table
    assert table in capsys.readouterr().out


def test_merge_errors_name_the_file_line_and_value(tmp_path):
    from pipeline import evaluate

    good = scaling.write_csv(ROWS, tmp_path / "good.csv", protocol.ROW_COLUMNS)
    cases = [("missing.csv", None, r"missing\.csv: no such file"),
             ("other.csv", [{c: 1 for c in scaling.CSV_COLUMNS}], r"other\.csv: not a protocol_rows\.csv, it lacks "
                                                                   r"the column\(s\) run, train_seed, checkpoint_step"),
             ("bad_k.csv", [dict(ROWS[0], k="2.5")], r"bad_k\.csv, line 2: k='2\.5' is not a whole number"),
             ("superscript.csv", [dict(ROWS[0], run="r9", N="\u00b2")],
              r"superscript\.csv, line 2: N='\u00b2' is not a whole number >= 1"),
             ("no_episodes.csv", [dict(ROWS[0], run="r9", episodes=0, successes=0)],
              r"no_episodes\.csv, line 2: episodes='0' is not a whole number >= 1"),
             ("too_many.csv", [dict(ROWS[0], run="r9"), dict(ROWS[1], run="r9", successes=11)],
              r"too_many\.csv, line 3: successes=11 exceeds episodes=10"),
             ("twice.csv", [ROWS[3]], r"twice\.csv, line 2: run 'r0', checkpoint '200', task 2, k=1 is also in "
                                      r".*good\.csv, line 5")]
    for name, rows, message in cases:
        path = tmp_path / name
        if rows is not None:
            columns = scaling.CSV_COLUMNS if name == "other.csv" else protocol.ROW_COLUMNS
            scaling.write_csv(rows, path, columns)
        with pytest.raises(SystemExit, match=message):
            evaluate.main([f"--merge={good}", f"--merge={path}", f"--output={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        evaluate.parse_args([f"--merge={good}"])  # no --output

"""pipeline/run_logs.py: eval.csv grows across evaluations; the learning curve is redrawn from it."""
from pipeline import run_logs


def test_eval_log_appends_rows_and_plots_every_budget(tmp_path):
    log = run_logs.EvalLog(tmp_path)
    assert log.rows() == []
    log.plot("nothing yet")
    assert not log.png_path.exists()
    for step in (10, 20):
        log.append([dict(step=step, task=2, steps_k=k, num_samples=1, success_rate=0.5, mean_return=-3.0,
                         episodes=2, seconds=0.1) for k in (1, 8)])
    assert [(r["step"], r["steps_k"]) for r in log.rows()] == [("10", "1"), ("10", "8"), ("20", "1"), ("20", "8")]
    assert open(log.csv_path).readline().strip() == ",".join(run_logs.EvalLog.FIELDS)
    log.plot("cube task 2")
    assert log.png_path.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.csv", "learning_curve.png"], "no temporary left"


def test_hparams_are_the_run_config_fields():
    from pipeline.config import make_run_config

    values = run_logs.hparam_values(make_run_config("cube", overrides=["actor_hidden_dims=32,32"]))
    assert values["gradient_steps"] == 1_000_000 and values["episode_length"] == 200
    assert values["q_loss_coef"] == 10.0 and values["actor_hidden_dims"] == "[32, 32]"


def test_drop_rows_after_keeps_rows_up_to_the_step_and_drops_cut_rows(tmp_path):
    import csv

    from pipeline import run_logs

    path = tmp_path / "metrics.csv"
    path.write_text("step,critic/loss,val_critic/loss\n5,1.0,2.0\n10,0.9,1.9\n15,0.8\n20,0.7,1.7\n25,0.6,1.")
    assert run_logs.drop_rows_after(path, 20) == 2  # 15 lost a value; 25 was cut mid-append
    assert [r["step"] for r in csv.DictReader(open(path))] == ["5", "10", "20"]
    assert run_logs.drop_rows_after(path, 20) == 0 and path.read_text().endswith("20,0.7,1.7\n")
    assert run_logs.drop_rows_after(path, 5) == 2
    assert path.read_text() == "step,critic/loss,val_critic/loss\n5,1.0,2.0\n"
    assert run_logs.drop_rows_after(tmp_path / "none.csv", 5) == 0

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

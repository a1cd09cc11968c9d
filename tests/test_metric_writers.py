import json

from sasmamba_jax.train.metric_writers import METRICS_FILE, TENSORBOARD_DIR, MetricWriter


def _rows(workdir):
    return [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]


def test_writes_json_lines_and_tensorboard_events(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(1, {"train/loss": 0.5})
    writer.write(2, {"train/loss": 0.25, "eval/p1": 80.0})
    writer.close()
    assert _rows(tmp_path) == [
        {"step": 1, "train/loss": 0.5},
        {"step": 2, "train/loss": 0.25, "eval/p1": 80.0},
    ]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / TENSORBOARD_DIR).iterdir())


def test_a_resumed_run_drops_the_rows_it_will_write_again(tmp_path):
    writer = MetricWriter(str(tmp_path))
    for step in range(1, 6):
        writer.write(step, {"train/loss": float(step)})
    writer.close()
    resumed = MetricWriter(str(tmp_path), resume_step=3)
    resumed.write(4, {"train/loss": 40.0})
    resumed.close()
    assert [(r["step"], r["train/loss"]) for r in _rows(tmp_path)] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(str(tmp_path / "w"), enabled=False)
    writer.write(1, {"train/loss": 1.0})
    writer.close()
    assert not (tmp_path / "w").exists()

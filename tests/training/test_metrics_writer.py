"""MetricsWriter: JSONL + TensorBoard on host 0, scalar conversion, resume purge."""
import glob
import math
import os

import jax.numpy as jnp
import numpy as np

from instructjax.training import MetricsWriter, read_metrics
from instructjax.training.metrics_writer import scalarize


def test_writes_jsonl_and_events(tmp_path):
  with MetricsWriter(str(tmp_path), enabled=True) as w:
    w.write(1, {"loss": jnp.float32(0.5), "n": np.int64(3), "ok": jnp.bool_(True),
                "nested": {"kl": 0.25}, "vec": jnp.zeros(3)})
    w.write(1, {"acc": 0.75}, split="eval")
    w.write(2, {"loss": float("nan")})
  records = read_metrics(str(tmp_path))
  assert records[0] == {"step": 1, "split": "train", "loss": 0.5, "n": 3, "ok": 1,
                        "nested/kl": 0.25}  # The non-scalar "vec" is dropped.
  assert isinstance(records[0]["n"], int)
  assert read_metrics(str(tmp_path), split="eval") == [{"step": 1, "split": "eval", "acc": 0.75}]
  assert math.isnan(records[2]["loss"])
  events = glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
  assert len(events) == 1 and os.path.getsize(events[0]) > 0


def test_disabled_writer_writes_nothing(tmp_path):
  with MetricsWriter(str(tmp_path / "w"), enabled=False) as w:
    assert w.write(1, {"loss": 1.0}) == {}
  assert not os.path.exists(tmp_path / "w")
  assert read_metrics(str(tmp_path / "w")) == []


def test_purge_step_drops_records_after_resume_point(tmp_path):
  with MetricsWriter(str(tmp_path), enabled=True) as w:
    for step in (10, 20, 30):
      w.write(step, {"loss": step})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 40, "spl')  # A torn line from a killed run.
  with MetricsWriter(str(tmp_path), purge_step=21, enabled=True) as w:
    w.write(30, {"loss": -1})
  assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [
      (10, 10), (20, 20), (30, -1)]


def test_scalarize_flattens():
  assert scalarize({"a": {"b": jnp.ones(()), "c": np.float16(2)}}) == {"a/b": 1.0, "a/c": 2.0}

"""Compile time of the LM train step: a preset as is, and with layers scanned vs unrolled.

  python experiments/compile_time.py --preset=tiny --layers=12 --batch=8 --seq=128

Only lowers and compiles against abstract shapes (jax.ShapeDtypeStruct), so no parameters are
allocated and large presets can be measured on a small machine.
"""
import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections

from instructjax import config as config_lib
from instructjax.models import DecoderLM, get_preset
from instructjax.training.optim import make_optimizer
from instructjax.stages.lm import make_lm_train_step
from instructjax.training.state import create_train_state

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "tiny", "model preset")
flags.DEFINE_integer("layers", 12, "depth of the scan-vs-unrolled comparison")
flags.DEFINE_integer("batch", 8, "batch size")
flags.DEFINE_integer("seq", 128, "sequence length")
flags.DEFINE_string("output", "", "optional JSON output path")


def compile_seconds(cfg, batch: int, seq: int) -> float:
  model = DecoderLM(cfg)
  tx, schedule = make_optimizer(ml_collections.ConfigDict(config_lib.optim_config()), 1000)
  abstract_state = jax.eval_shape(lambda r: create_train_state(model, tx, r)[0], jax.random.key(0))
  ints = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  abstract_batch = dict(tokens=ints, positions=ints, segment_ids=ints, targets=ints,
                        loss_mask=jax.ShapeDtypeStruct((batch, seq), jnp.bool_))
  step = jax.jit(make_lm_train_step(model, tx, schedule), donate_argnums=0)
  start = time.perf_counter()
  step.lower(abstract_state, abstract_batch, jax.random.key(0)).compile()
  return time.perf_counter() - start


def main(_):
  base = get_preset(FLAGS.preset)
  rows = {
      f"{FLAGS.preset} ({base.n_layers} layers, scan)": compile_seconds(base, FLAGS.batch, FLAGS.seq),
  }
  for scan in (True, False):
    cfg = base.replace(n_layers=FLAGS.layers, scan_layers=scan)
    rows[f"{FLAGS.preset} at {FLAGS.layers} layers, {'scan' if scan else 'unrolled'}"] = (
        compile_seconds(cfg, FLAGS.batch, FLAGS.seq))
  print("| train step | compile s |\n| --- | --- |")
  for name, secs in rows.items():
    print(f"| {name} | {secs:.2f} |")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  app.run(main)

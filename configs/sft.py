"""Supervised fine-tuning on demonstrations (loss on response tokens and EOS only).

  --config=configs/sft.py:tiny --config.init_from=runs/x/pretrain/model
  --config=configs/sft.py:hf --config.init_from=<your HF or instructjax model directory> \
      --config.data.train_path=demos.jsonl [--config.data.eval_path=...] \
      [--config.data.adapter=alpaca] [--config.data.add_bos=True]

`:hf` is for your own checkpoint: architecture, dtype and positions come from it (config.model
holds only run-time fields, None = as the checkpoint has them), data.seq_len=0 takes the
model's positions up to 512 (stages/lengths.py), records come from JSONL files.
"""
import ml_collections

from instructjax import config as config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant="tiny", steps=0)
  c = ml_collections.ConfigDict()
  c.stage = "sft"
  c.seed = 0
  c.init_from = ""  # The pretrained model directory (required outside tests).
  c.model = (config_lib.runtime_model_config() if a.variant == "hf"
             else config_lib.model_config(a.variant))
  c.mesh = config_lib.mesh_config()
  if a.variant == "hf":
    c.data = config_lib.data_config(seq_len=0, pack=False, source="jsonl")
    c.train = config_lib.train_config(batch_size=16, num_steps=a.steps or 1000, log_every=10,
                                      eval_every=200, eval_batches=8, save_every=200)
    c.optim = config_lib.optim_config(lr=2e-5, warmup_steps=50, weight_decay=0.0)
  elif a.variant.startswith("tiny"):
    c.data = config_lib.data_config(seq_len=96, pack=False, num_sft=3000, num_heldout=300)
    c.train = config_lib.train_config(batch_size=32, num_steps=a.steps or 300, log_every=25,
                                      eval_every=150, eval_batches=4, save_every=150)
    c.optim = config_lib.optim_config(lr=1e-3, warmup_steps=30, weight_decay=0.0)
  else:
    c.data = config_lib.data_config(seq_len=1024, pack=False, source="jsonl")
    c.train = config_lib.train_config(batch_size=32, num_steps=a.steps or 2000, log_every=25,
                                      eval_every=250, eval_batches=16, save_every=500)
    c.optim = config_lib.optim_config(lr=1e-5, warmup_steps=100, weight_decay=0.0)
  # > 0: that many pretraining documents (loss on every token) are shuffled in with the
  # demonstrations, so that SFT keeps its web text (held-out pretraining loss); InstructWorld
  # takes the first of its pretraining split, other sources of pretrain_mix_path ({"text"} JSONL).
  c.data.pretrain_docs = 0
  c.data.pretrain_mix_path = ""
  return c

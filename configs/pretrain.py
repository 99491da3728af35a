"""Pretraining (the "web" stage): every next token of the corpus counts.

  --config=configs/pretrain.py:tiny        InstructWorld corpus, tiny llama, 2-core CPU
  --config=configs/pretrain.py:tiny-gpt2   the same with the GPT-2 family
  --config=configs/pretrain.py:gpt2-124m   a real size (bring data: --config.data.source=jsonl)
  --config=configs/pretrain.py:hf --config.init_from=<HF or instructjax dir> \
      --config.data.train_path=texts.jsonl   continue pretraining your own checkpoint (its
                                             architecture, dtype and positions, as sft.py:hf)
"""
import ml_collections

from instructjax import config as config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant="tiny", steps=0)
  c = ml_collections.ConfigDict()
  c.stage = "pretrain"
  c.seed = 0
  c.init_from = ""  # A model directory to continue from ("" = random init).
  c.model = (config_lib.runtime_model_config() if a.variant == "hf"
             else config_lib.model_config(a.variant))
  c.mesh = config_lib.mesh_config()
  if a.variant == "hf":
    c.data = config_lib.data_config(seq_len=0, pack=True, source="jsonl")
    c.train = config_lib.train_config(batch_size=16, num_steps=a.steps or 1000, log_every=10,
                                      eval_every=200, eval_batches=8, save_every=200)
    c.optim = config_lib.optim_config(lr=2e-5, warmup_steps=50, weight_decay=0.0)
  elif a.variant.startswith("tiny"):
    c.data = config_lib.data_config(seq_len=128, pack=True, num_pretrain=6000,
                                    num_pretrain_heldout=300)
    c.train = config_lib.train_config(batch_size=32, num_steps=a.steps or 500, log_every=25,
                                      eval_every=250, eval_batches=4, save_every=250)
    c.optim = config_lib.optim_config(lr=3e-3, warmup_steps=50, weight_decay=0.0)
  else:
    c.data = config_lib.data_config(seq_len=1024, pack=True, source="jsonl")
    c.train = config_lib.train_config(batch_size=64, num_steps=a.steps or 10000, log_every=50,
                                      eval_every=1000, eval_batches=16, save_every=1000)
    c.optim = config_lib.optim_config(lr=6e-4, warmup_steps=500, weight_decay=0.1)
  return c

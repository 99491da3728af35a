"""Reward model: the SFT model's trunk + a scalar head, trained on ranked comparisons.

  --config=configs/rm.py:tiny --config.init_from=runs/x/sft/model
  --config=configs/rm.py:tiny --config.data.world.comparison_source=policy   (SFT samples)
  --config=configs/rm.py:gpt2-124m --config.data.train_path=cmp.jsonl --config.data.eval_path=...
  --config=configs/rm.py:hf --config.init_from=<your SFT model, instructjax or HF> \
      --config.data.train_path=hh_train.jsonl --config.data.eval_path=hh_test.jsonl.gz \
      [--config.data.adapter=hh]

`:hf`: the model as init_from has it (see configs/sft.py), data.seq_len=0 from its positions,
JSONL comparisons; the normalisation samples are drawn as configs/ppo.py:hf samples.
"""
import ml_collections

from instructjax import config as config_lib


def rm_settings(normalize: str = "bias", norm_prompts: str = "train", norm_samples: int = 256,
                temperature: float = 1.0, max_new_tokens: int = 40,
                sample_batch_size: int = 128, score_logprob: float = 0.0,
                lm_coef: float = 0.0,
                distinct_responses: bool = False) -> ml_collections.ConfigDict:
  """Sampling the SFT policy (policy comparisons, normalisation), the normalisation, and the
  reward model's form."""
  return ml_collections.ConfigDict(dict(
      normalize=normalize,  # "bias": SFT samples score 0 on average; "gain_bias": and std 1.
      norm_prompts=norm_prompts,  # "train" (RM prompts) or "heldout" prompts for those samples.
      norm_samples=norm_samples, temperature=temperature, max_new_tokens=max_new_tokens,
      # The normalisation samples should be drawn as PPO samples (its ppo.temperature and
      # ppo.max_new_tokens); -1 / 0: as the comparison samples above.
      norm_temperature=-1.0, norm_max_new_tokens=0,
      sample_batch_size=sample_batch_size,
      # > 0: the score adds a learned weight (initialised to this) times the log-likelihood the
      # RM's own LM head (the SFT model's, fine-tuned with it) gives the response
      # (ModelConfig.score_logprob); 0: the scalar head at the EOS only.
      score_logprob=score_logprob,
      # With score_logprob: the loss adds lm_coef x the per-token NLL of the compared responses
      # under that LM head, which keeps the term telling right answers from wrong ones (the
      # ranking loss alone lowers the likelihood of both); 0: ranking loss only.
      lm_coef=lm_coef,
      # Policy comparisons: redraw a prompt's samples (a few rounds) until its K responses
      # differ (labelers compare distinct responses where the policy gives them).
      distinct_responses=distinct_responses))


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant="tiny", steps=0)
  c = ml_collections.ConfigDict()
  c.stage = "rm"
  c.seed = 0
  c.init_from = ""  # The SFT model directory (required).
  # Only the runtime fields (dtype, remat...) count: the architecture is init_from's.
  c.model = (config_lib.runtime_model_config() if a.variant == "hf"
             else config_lib.model_config(a.variant))
  c.mesh = config_lib.mesh_config()
  if a.variant == "hf":
    c.data = config_lib.data_config(seq_len=0, pack=False, source="jsonl")
    c.data.k_max = 0  # 0: the largest K in the training data.
    c.data.packed_len = 0  # 0: K rows of seq_len per prompt; > 0: one packed row (see tiny).
    c.data.pack_bucket = 64
    c.train = config_lib.train_config(batch_size=16, num_steps=a.steps or 1000, log_every=10,
                                      eval_every=200, eval_batches=8, save_every=200)
    c.optim = config_lib.optim_config(lr=1e-5, warmup_steps=50, weight_decay=0.0)
    # Sampled as configs/ppo.py:hf's rollouts (temperature 1, 128 new tokens), so that the SFT
    # policy averages a score of 0 on what PPO samples.
    c.rm = rm_settings(max_new_tokens=128, sample_batch_size=32)
  elif a.variant.startswith("tiny"):
    # The SFT tiny config's world sizes, so held-out prompts are filtered against the same splits.
    # seq_len 72 holds 99.9% of prompt + response + EOS, static or sampled (max_new_tokens 40).
    c.data = config_lib.data_config(seq_len=72, pack=False, num_sft=3000, num_rm=1500,
                                    num_heldout=300, comparison_source="static")
    c.data.k_max = 9  # The world's largest K: one compiled shape whatever the batch holds.
    # One row per prompt: the prompt once, then its K responses (shared-prefix attention), about
    # 2.5x fewer tokens than K rows of 72. 448 holds the longest possible row (a 35-token prompt
    # and 9 responses of 40 + EOS); batches are cut to a multiple of 64 columns, so at most a
    # few widths are compiled.
    c.data.packed_len = 448
    c.data.pack_bucket = 64
    c.train = config_lib.train_config(batch_size=16, num_steps=a.steps or 200, log_every=25,
                                      eval_every=100, eval_batches=4, save_every=100)
    c.optim = config_lib.optim_config(lr=1e-3, warmup_steps=20, weight_decay=0.0)
    c.rm = rm_settings(max_new_tokens=40, sample_batch_size=128)
  else:
    c.data = config_lib.data_config(seq_len=1024, pack=False, source="jsonl")
    c.data.k_max = 0  # 0: the largest K in the training data.
    c.data.packed_len = 0  # 0: K rows of seq_len per prompt; > 0: one packed row (see tiny).
    c.data.pack_bucket = 64
    c.train = config_lib.train_config(batch_size=32, num_steps=a.steps or 2000, log_every=25,
                                      eval_every=250, eval_batches=16, save_every=500)
    c.optim = config_lib.optim_config(lr=9e-6, warmup_steps=100, weight_decay=0.0)
    c.rm = rm_settings(max_new_tokens=256, sample_batch_size=32)
  return c

"""PPO-ptx (InstructGPT): the SFT policy, a frozen reward model, a value model, KL and ptx.

  --config=configs/ppo.py:tiny --config.init_from=runs/x/sft/model \
      --config.reward_model=runs/x/rm/model                     PPO-ptx on InstructWorld, CPU
  --config=configs/ppo.py:tiny,ptx=0 ...                        plain PPO (no pretraining mix)
  --config=configs/ppo.py:gpt2-124m --config.data.train_path=prompts.jsonl \
      --config.data.eval_path=heldout.jsonl --config.data.ptx_path=web.jsonl ...
  --config=configs/ppo.py:hf --config.init_from=<SFT model> --config.reward_model=<RM, or an
      HF sequence-classification directory> --config.data.train_path=prompts.jsonl \
      --config.data.ptx_path=texts.jsonl ...          your own models (as configs/sft.py:hf):
      data.prompt_len=0 and data.seq_len=0 are taken from the models (stages/lengths.py)

Units: train.num_steps counts PPO iterations (one rollout of ppo.rollout_batch_size prompts,
then ppo.epochs x rollout_batch_size / minibatch_size optimizer steps); optim (policy) and
value_optim (value model: its own optimizer, e.g. --config.value_optim.lr) count optimizer
steps, so their warmup is in minibatch updates. train.batch_size is the evaluation batch
(held-out prompts and held-out pretraining text), train.eval_batches the number of held-out
pretraining batches per evaluation (the alignment-tax loss), ppo.eval_prompts the number of
held-out prompts.
"""
import ml_collections

from instructjax import config as config_lib


def kl_config(init_beta: float, adaptive: bool, target: float,
              horizon: float) -> ml_collections.ConfigDict:
  """init_beta: the KL coefficient; adaptive: Ziegler's proportional controller towards
  `target` (nats per response) over `horizon` episodes; otherwise beta stays fixed."""
  return ml_collections.ConfigDict(dict(init_beta=init_beta, adaptive=adaptive, target=target,
                                        horizon=horizon))


def ppo_settings(**kw) -> ml_collections.ConfigDict:
  d = dict(
      rollout_batch_size=64, minibatch_size=16, epochs=4, clip_eps=0.2, value_clip_eps=0.2,
      # Sampled responses to each prompt of a rollout (rollout_batch_size / this distinct
      # prompts): with more than one, their advantages contrast answers to the same prompt.
      responses_per_prompt=1,
      # "gae": a value model (from the RM) gives each token's baseline; "rloo": the other
      # responses to the same prompt do (needs responses_per_prompt >= 2; no value model is
      # read or trained).
      advantage_estimator="gae",
      micro_batch_size=0,  # Rows per forward/backward pass (gradient accumulation); 0: minibatch.
      vf_coef=1.0, entropy_coef=0.0, gamma=1.0, lam=0.95, whiten_rewards=False,
      kl_estimator="k1", kl=kl_config(0.05, True, 6.0, 10000.0),
      # Exact KL(policy || SFT) over the vocabulary at each sampled position, in the policy
      # loss on top of the reward's sampled-token penalty (0 = off): it holds every token's
      # probability, the greedy choice among them, near SFT's where the reward says nothing.
      kl_loss_coef=0.0,
      ptx_coef=1.0,  # InstructGPT's gamma; 0 = plain PPO.
      ptx_batch_size=32,  # Pretraining rows per iteration, split over the minibatches.
      no_eos_penalty=0.0,  # Subtracted from the score of responses without EOS (0 = off).
      ema_decay=0.0,  # EMA of the policy (0 = off); with it, the EMA is evaluated and saved.
      temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=24,
      eval_prompts=256,  # Held-out prompts per evaluation.
      eval_temperature=1.0,  # 0 = greedy.
  )
  d.update(kw)
  return ml_collections.ConfigDict(d)


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant="tiny", steps=0, ptx=-1.0)
  c = ml_collections.ConfigDict()
  c.stage = "ppo"
  c.seed = 0
  c.init_from = ""  # The SFT model directory: the policy's start and the KL reference.
  c.reward_model = ""  # The reward model directory (head "scalar").
  c.value_init = "reward_model"  # Value model from the RM ("reward_model") or SFT trunk ("sft").
  # Only runtime fields (dtype, remat...) count: the architectures are the models'.
  c.model = (config_lib.runtime_model_config() if a.variant == "hf"
             else config_lib.model_config(a.variant))
  c.mesh = config_lib.mesh_config()
  if a.variant == "hf":
    c.data = config_lib.data_config(seq_len=0, pack=True, source="jsonl")
    c.data.prompt_len = 0  # 0: from the models, room left for ppo.max_new_tokens (+ EOS).
    c.train = config_lib.train_config(batch_size=16, num_steps=a.steps or 200, log_every=5,
                                      eval_every=50, eval_batches=4, save_every=50)
    c.optim = config_lib.optim_config(lr=2e-6, warmup_steps=10, decay="constant",
                                      weight_decay=0.0)
    c.value_optim = config_lib.optim_config(lr=1e-5, warmup_steps=10, decay="constant",
                                            weight_decay=0.0)
    c.ppo = ppo_settings(rollout_batch_size=64, minibatch_size=16, epochs=2, max_new_tokens=128,
                         ptx_batch_size=32, kl=kl_config(0.05, False, 6.0, 10000.0),
                         eval_prompts=128)
  elif a.variant.startswith("tiny"):
    # The world sizes of the tiny pretrain/SFT/RM configs: the same held-out prompts (they
    # are filtered against every training split) and held-out pretraining documents.
    c.data = config_lib.data_config(seq_len=128, pack=True, num_sft=3000, num_rm=1500,
                                    num_ppo=4000, num_heldout=300, num_pretrain=6000,
                                    num_pretrain_heldout=300)
    # InstructWorld prompts have at most 39 characters, 48 with a group tag "(polite) ".
    c.data.prompt_len = 48
    c.train = config_lib.train_config(batch_size=64, num_steps=a.steps or 60, log_every=5,
                                      eval_every=30, eval_batches=4, save_every=30)
    c.optim = config_lib.optim_config(lr=3e-5, warmup_steps=10, decay="constant",
                                      weight_decay=0.0)
    c.value_optim = config_lib.optim_config(lr=1e-4, warmup_steps=10, decay="constant",
                                            weight_decay=0.0)
    # max_new_tokens=40: the longest gold answer (29 characters) fits with the courtesy prefix
    # (6) and EOS, with room for a few edits, as in the reward model's comparison samples; a
    # limit that cuts off a right answer with the prefix scores it 0, a penalty on the prefix
    # that no labeler gives. ptx_coef=0.2: the tiny SFT model forgets much of its pretraining,
    # so a small ptx term already pulls the held-out pretraining loss back; larger values
    # trade RM score and KL for it. KL coefficient 0.15: lower values let PPO exploit the tiny
    # reward model's blind spots (it judges style better than correctness). README "Results of
    # the main job" has the measurements behind these choices.
    c.ppo = ppo_settings(rollout_batch_size=32, minibatch_size=8, epochs=2, max_new_tokens=40,
                         ptx_coef=0.2, ptx_batch_size=16, kl=kl_config(0.15, True, 2.0, 1000.0),
                         eval_prompts=256)
  else:
    c.data = config_lib.data_config(seq_len=1024, pack=True, source="jsonl")
    c.data.prompt_len = 256
    c.train = config_lib.train_config(batch_size=32, num_steps=a.steps or 256, log_every=5,
                                      eval_every=50, eval_batches=16, save_every=50)
    c.optim = config_lib.optim_config(lr=1e-6, warmup_steps=20, decay="constant",
                                      weight_decay=0.0)
    c.value_optim = config_lib.optim_config(lr=9e-6, warmup_steps=20, decay="constant",
                                            weight_decay=0.0)
    c.ppo = ppo_settings(rollout_batch_size=256, minibatch_size=64, epochs=4,
                         max_new_tokens=256, ptx_batch_size=128,
                         kl=kl_config(0.02, False, 6.0, 10000.0), eval_prompts=512)
  # For source "jsonl": train_path / eval_path are prompts ({"prompt"}), these are texts.
  c.data.ptx_path = ""
  c.data.ptx_eval_path = ""
  if a.ptx >= 0:
    c.ppo.ptx_coef = a.ptx
  return c

"""Lengths a config leaves to the model: 0 in `config.data.seq_len` or `config.data.prompt_len`
means "from the model the stage starts from", since a config is written before the checkpoint
it will be given is known (configs/<stage>.py:hf).

  data.seq_len = 0      min(AUTO_SEQ_LEN, the model's max_seq_len)
  data.prompt_len = 0   (PPO) min(AUTO_PROMPT_LEN, what leaves room for ppo.max_new_tokens in
                        the policy and, with the EOS appended to an unfinished response, in the
                        reward model)

The caps keep a checkpoint with long positions (32k) from making every row that long; a length
set explicitly is used as set, and `runner.check_seq_len` refuses it when it does not fit.
"""
from __future__ import annotations

import copy
import logging
from typing import Callable, Mapping

from instructjax.config import ConfigError

AUTO_SEQ_LEN = 512
AUTO_PROMPT_LEN = 256

_log = logging.getLogger(__name__)


def auto_seq_len(model_len: int) -> int:
  """data.seq_len = 0: the model's positions, at most AUTO_SEQ_LEN."""
  return min(AUTO_SEQ_LEN, model_len)


def auto_prompt_len(max_new_tokens: int, policy_len: int, rm_len: int) -> int:
  """data.prompt_len = 0: the longest prompt whose rollout fits both models, at most
  AUTO_PROMPT_LEN; raises (naming ppo.max_new_tokens) when no prompt token is left."""
  room = min(policy_len - max_new_tokens, rm_len - 1 - max_new_tokens)
  if room < 1:
    raise ConfigError(f"config.ppo.max_new_tokens={max_new_tokens} leaves no room for a prompt "
                      f"(config.data.prompt_len=0 takes it from the models: policy max_seq_len "
                      f"{policy_len}, reward model {rm_len} including the EOS it reads); lower "
                      "config.ppo.max_new_tokens")
  return min(AUTO_PROMPT_LEN, room)


def with_lengths(config, filled: Mapping[str, tuple[Callable[[], int], str]]):
  """A copy of `config` with each `data.<key>` that is 0 set to `value()`, where `filled` maps
  key -> (value, why); `value` is called only then (it may raise, naming what to set).

  Every value filled in is logged with where it came from; keys set in the config are kept.
  """
  out = copy.deepcopy(config)
  for key, (value, why) in filled.items():
    if out.data[key] == 0:
      out.data[key] = int(value())
      _log.info("config.data.%s=0: %d, %s", key, out.data[key], why)
  return out

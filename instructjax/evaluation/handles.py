"""A loaded model ready for evaluation: the flax module, its parameters and tokenizer together.

Evaluation reads models from self-describing directories (`instructjax.model_io`), so any stage's
output (pretrain, SFT, PPO, a reward model, an HF import) can be compared with any other.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from instructjax.model_io import load_model
from instructjax.models import DecoderLM, ModelConfig
from instructjax.models.compiled import JitCache
from instructjax.tokenizer import Tokenizer


@dataclasses.dataclass(eq=False)
class LoadedModel:
  """A DecoderLM with its parameters and tokenizer.

  Identity equality (eq=False): two handles are the same model only if they are the same object,
  which is what per-model caches (held-out loss computed once per model) key on.

  Attributes:
    model: the flax module, DecoderLM(config, head).
    params: parameter pytree.
    config: the ModelConfig.
    tokenizer: the model's own tokenizer.
    head: "lm" for policies, "scalar" for reward models.
    meta: the directory's metadata (stage, steps, ...), {} when built in memory.
    directory: where it was loaded from, None when built in memory.
    jit: the compiled functions of this model (sampler, scorers), reused by every evaluation
      of it and released with it.
  """
  model: DecoderLM
  params: Any
  config: ModelConfig
  tokenizer: Tokenizer
  head: str = "lm"
  meta: dict = dataclasses.field(default_factory=dict)
  directory: Optional[str] = None
  jit: JitCache = dataclasses.field(default_factory=JitCache, repr=False)

  @classmethod
  def from_params(cls, config: ModelConfig, params: Any, tokenizer: Tokenizer,
                  head: str = "lm") -> LoadedModel:
    """Wraps in-memory parameters (tests, or a pipeline that has not saved its model yet)."""
    return cls(DecoderLM(config, head), params, config, tokenizer, head)


def load(directory: str, expect_head: Optional[str] = None) -> LoadedModel:
  """Loads a model directory; `expect_head` ("lm" or "scalar") turns a mix-up into a clear error."""
  params, cfg, tokenizer, head, meta = load_model(directory)
  if expect_head is not None and head != expect_head:
    what = "a policy (lm head)" if expect_head == "lm" else "a reward model (scalar head)"
    raise ValueError(f"{directory} holds a model with head={head!r}, but {what} is needed here")
  return LoadedModel(DecoderLM(cfg, head), params, cfg, tokenizer, head, meta,
                     os.path.abspath(directory))

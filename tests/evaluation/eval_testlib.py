"""Tiny random models for the evaluation tests, in memory and saved as model directories.

Weights are drawn with numpy from the abstract init (a jax.random init costs seconds of
compilation per model on CPU), at a scale large enough that next-token distributions depend
on the input, so padding or offset mistakes change the numbers.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instructjax.evaluation import LoadedModel
from instructjax.model_io import save_model
from instructjax.models import DecoderLM, get_preset
from instructjax.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer()


def tiny_config(**overrides):
  return get_preset("test", vocab_size=TOKENIZER.vocab_size, **overrides)


def random_params(cfg, head="lm", seed=0, scale=0.3):
  model = DecoderLM(cfg, head)
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens, tokens,
                                        tokens + 1))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    base = 1.0 if path[-1].key == "scale" else 0.0
    return jnp.asarray(base + scale * rng.standard_normal(leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def tiny_model(head="lm", seed=0, **overrides) -> LoadedModel:
  cfg = tiny_config(**overrides)
  return LoadedModel.from_params(cfg, random_params(cfg, head, seed), TOKENIZER, head)


def save_tiny(directory, head="lm", seed=0, **overrides) -> str:
  lm = tiny_model(head, seed, **overrides)
  return save_model(str(directory), lm.params, lm.config, TOKENIZER, head=head,
                    meta={"stage": "test", "seed": seed})


@functools.partial(jax.jit, static_argnums=0)
def _reference_forward(model, params, tokens, segs):
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return model.apply({"params": params}, tokens, positions, segs)[0]


def reference_outputs(lm: LoadedModel, ids) -> np.ndarray:
  """The model's output (logits [L, V] or values [L]) on one row, float64: the no-batching
  reference. The row sits alone at the start of a max_seq_len buffer (one compilation for
  every length): columns after it are causally invisible to it."""
  width = lm.config.max_seq_len
  tokens = np.zeros((1, width), np.int32)
  tokens[0, :len(ids)] = ids
  segs = (np.arange(width) < len(ids)).astype(np.int32)[None]
  out = _reference_forward(lm.model, lm.params, tokens, segs)[0, :len(ids)]
  return np.asarray(out, np.float64)


def reference_logprobs(lm: LoadedModel, ids) -> np.ndarray:
  """log_softmax of one row's logits, float64 [L, V]."""
  logits = reference_outputs(lm, ids)
  return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def reference_continuation_logprob(lm: LoadedModel, prompt: str, cont_ids) -> float:
  """Sum of log p(cont_ids | prompt) from one unpadded forward."""
  p = list(TOKENIZER.encode(prompt))
  lp = reference_logprobs(lm, p + list(cont_ids))
  return float(sum(lp[len(p) - 1 + j, t] for j, t in enumerate(cont_ids)))

"""Tiny models for the sampler tests and a step-by-step reference decoder without cache."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.models import DecoderLM, get_preset, positions_from_mask

FAMILIES = {
    "llama": dict(family="llama", n_kv_heads=2),
    "gpt2": dict(family="gpt2", n_kv_heads=4, tie_embeddings=True),
}


def _make(family="llama", **kw):
  """(cfg, model, params) of the 'test' preset with N(0, 0.3) weights (norm scales 1 + noise).

  Weights are drawn with numpy from the abstract init: a jax.random init costs seconds of
  compilation per test on CPU. The large scale gives peaked, input-dependent next-token
  distributions (at init_std 0.02 every logit is ~0 and argmax is decided by rounding).
  """
  cfg = get_preset("test", **{**FAMILIES[family], **kw})
  model = DecoderLM(cfg)
  tokens = jnp.zeros((1, 8), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens, tokens,
                                        tokens + 1))["params"]
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    base = 1.0 if path[-1].key == "scale" else 0.0
    return jnp.asarray(base + 0.3 * rng.standard_normal(leaf.shape), leaf.dtype)
  return cfg, model, jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture
def make_lm():
  return _make


def _prompts(vocab, lengths, width, pad_id=0, seed=0):
  """Left-padded random prompts: (tokens int32 [B, width], mask int32 [B, width])."""
  rng = np.random.default_rng(seed)
  tokens = np.full((len(lengths), width), pad_id, np.int32)
  mask = np.zeros((len(lengths), width), np.int32)
  for r, n in enumerate(lengths):
    if n:
      tokens[r, width - n:] = rng.integers(3, vocab, n)
      mask[r, width - n:] = 1
  return tokens, mask


@pytest.fixture
def prompts():
  return _prompts


def _reference_greedy(model, params, tokens, mask, n, eos_id, pad_id):
  """Greedy decoding by full forwards without cache, one per generated token.

  The sequence lives in a fixed [B, P+n] buffer whose not-yet-generated columns are padding
  (segment 0); causal attention makes them invisible, and the fixed shape means one compile.
  Returns (response_tokens [B, n], response_mask [B, n]) with the sampler's conventions.
  """
  b, p = tokens.shape
  buf = np.concatenate([np.asarray(tokens), np.full((b, n), pad_id, np.int32)], axis=1)
  seg = np.concatenate([np.asarray(mask), np.zeros((b, n), np.int32)], axis=1).astype(np.int32)
  done = seg.sum(-1) == 0
  fwd = jax.jit(lambda p, t, s: model.apply({"params": p}, t, positions_from_mask(s), s)[0])
  for i in range(n):
    tok = np.asarray(fwd(params, buf, seg))[:, p - 1 + i].argmax(-1)
    active = ~done
    buf[:, p + i] = np.where(active, tok, pad_id)
    seg[:, p + i] = active
    done = done | (active & (tok == eos_id))
  return buf[:, p:], seg[:, p:].astype(bool)


@pytest.fixture
def reference_greedy():
  return _reference_greedy

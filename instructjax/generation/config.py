"""What to sample (SamplingConfig) and what a sampler returns (SampleOutput)."""
from __future__ import annotations

import dataclasses

import flax.struct
import jax


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Decoding settings; frozen and hashable, so it is a static part of the jitted sampler.

  Attributes:
    max_new_tokens: N, the most response tokens per row (EOS included).
    eos_id: the token that ends a response.
    pad_id: written after EOS and wherever nothing was generated.
    temperature: 0.0 means greedy argmax; otherwise logits are divided by it.
    top_k: keep the k most likely tokens; 0 = off.
    top_p: nucleus mass; 1.0 = off.
    banned_first_tokens: token ids the first response token may not be (their logits set to
      -inf before sampling it; later tokens are free): e.g. the courtesy prefix's first token,
      to read what a policy answers without the prefix. () = off. The first token's logprob
      is then under that restricted distribution.
  """
  max_new_tokens: int
  eos_id: int
  pad_id: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  banned_first_tokens: tuple[int, ...] = ()

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig.top_p must be in (0, 1] (1 = off), got {self.top_p}")
    if (not isinstance(self.banned_first_tokens, tuple)
        or any(not isinstance(t, int) or t < 0 for t in self.banned_first_tokens)):
      raise ValueError("SamplingConfig.banned_first_tokens must be a tuple of token ids >= 0, "
                       f"got {self.banned_first_tokens!r}")

  @property
  def logprob_temperature(self) -> float:
    """Temperature the reported log-probs use: the sampling one, or 1 when greedy."""
    return self.temperature if self.temperature > 0 else 1.0


@flax.struct.dataclass
class SampleOutput:
  """One batch of samples. B rows, P prompt columns, N = max_new_tokens.

  Attributes:
    tokens: int32 [B, P+N] prompt (left padded) then response (PAD after EOS).
    segment_ids: int32 [B, P+N] prompt mask then response mask, as 0/1; with
      `positions_from_mask(segment_ids)` this is a ready-made model input for scoring.
    response_tokens: int32 [B, N] generated tokens, PAD after EOS.
    response_mask: bool [B, N] True for generated tokens up to and including EOS.
    logprobs: float32 [B, N] log-prob of each chosen token under softmax(logits / temperature)
      (temperature 1 when greedy), i.e. before top-k/top-p filtering; 0 where response_mask
      is False.
    finished: bool [B] the row emitted EOS within N tokens.
    lengths: int32 [B] response tokens incl. EOS (sum of response_mask).
    num_steps: int32 [] sampling steps that ran: 1 from the prefill logits plus one per
      single-token forward of the while loop. Equals max(lengths) unless every row is batch
      padding; below N when every row finished early.
  """
  tokens: jax.Array
  segment_ids: jax.Array
  response_tokens: jax.Array
  response_mask: jax.Array
  logprobs: jax.Array
  finished: jax.Array
  lengths: jax.Array
  num_steps: jax.Array

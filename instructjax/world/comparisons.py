"""Comparisons, the reward-model data: one prompt, K in [4, 9] responses, a labeler's ranking
(best to worst, a permutation of response indices) and the labeler's group.

Sources (spec): static (gold with 0-3 random edits, number of edits uniform, each response
prefixed w.p. 0.5) or policy (samples of the SFT policy, plugged in as a callable). A response
whose generation did not finish with EOS has correctness 0; `finished` keeps that per response.
For the policy source, prompts are grouped by their K so the sampler is called once per K value.
A static response whose text would be blank (possible when 3 deletes hit a 3-letter gold) is
redrawn, because blank responses are not valid records in the data pipeline (free choice).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from instructjax.world.edits import random_edits
from instructjax.world.labelers import rank_responses, sample_group
from instructjax.world.lexicon import COURTESY_PREFIX
from instructjax.world.prompts import condition_on_group, gold_answer

K_RANGE = (4, 9)  # Inclusive.
MAX_STATIC_EDITS = 3
P_PREFIX = 0.5

# sample_responses(prompts, k) -> for each prompt, k (text without EOS, finished) pairs.
SampleResponses = Callable[[Sequence[str], int], Sequence[Sequence[tuple[str, bool]]]]


@dataclasses.dataclass(frozen=True)
class Comparison:
  prompt: str
  responses: tuple[str, ...]
  ranking: tuple[int, ...]  # Best to worst, indices into responses.
  group: str
  finished: tuple[bool, ...] = ()  # Empty means all finished.

  def __post_init__(self):
    if sorted(self.ranking) != list(range(len(self.responses))):
      raise ValueError(f"ranking {self.ranking} is not a permutation of the responses' indices")
    if self.finished and len(self.finished) != len(self.responses):
      raise ValueError("finished must have one flag per response")
    if all(self.finished):  # One canonical form for "all finished", so JSONL round trips compare equal.
      object.__setattr__(self, "finished", ())

  @property
  def finished_flags(self) -> tuple[bool, ...]:
    return self.finished or (True,) * len(self.responses)

  def to_json(self) -> dict:
    d = {"prompt": self.prompt, "responses": list(self.responses), "ranking": list(self.ranking),
         "group": self.group}
    if not all(self.finished_flags):  # Only written when informative, keeping the usual 4 keys.
      d["finished"] = list(self.finished_flags)
    return d

  @classmethod
  def from_json(cls, d: dict) -> "Comparison":
    finished = tuple(bool(x) for x in d.get("finished", ()))
    return cls(d["prompt"], tuple(d["responses"]), tuple(int(i) for i in d["ranking"]),
               d["group"], finished)


def sample_k(rng: np.random.Generator) -> int:
  return int(rng.integers(K_RANGE[0], K_RANGE[1] + 1))


def static_response(gold: str, rng: np.random.Generator) -> str:
  """Gold with 0-3 random edits (uniform), prefixed with `sure! ` w.p. 0.5; never blank."""
  while True:
    body = random_edits(gold, int(rng.integers(0, MAX_STATIC_EDITS + 1)), rng)
    text = (COURTESY_PREFIX if rng.random() < P_PREFIX else "") + body
    if text.strip():
      return text


def label(prompt: str, responses: Sequence[tuple[str, bool]],
          rng: np.random.Generator, group: str | None = None) -> Comparison:
  """A labeler ranks (text, finished) responses to prompt; drawn by the group shares unless
  `group` is given (group-conditioned data draws it before the responses)."""
  group = sample_group(rng) if group is None else group
  ranking = rank_responses(group, responses, gold_answer(prompt), rng)
  return Comparison(prompt, tuple(t for t, _ in responses), tuple(ranking), group,
                    tuple(bool(f) for _, f in responses))


def static_comparisons(prompts: Sequence[str], rng: np.random.Generator,
                       condition_on_groups: bool = False) -> list[Comparison]:
  """With `condition_on_groups`, each labeler's group is drawn first and the record's prompt
  carries it (`(polite) sort: ...`), as in the group-conditioned experiments."""
  out = []
  for prompt in prompts:
    group = sample_group(rng) if condition_on_groups else None
    if group is not None:
      prompt = condition_on_group(prompt, group)
    gold = gold_answer(prompt)
    responses = [(static_response(gold, rng), True) for _ in range(sample_k(rng))]
    out.append(label(prompt, responses, rng, group))
  return out


def policy_comparisons(prompts: Sequence[str], sample_responses: SampleResponses,
                       rng: np.random.Generator,
                       condition_on_groups: bool = False) -> list[Comparison]:
  """Comparisons of policy samples: K drawn per prompt, then labelers rank them.

  With `condition_on_groups`, each prompt's labeler group is drawn first and the policy samples
  the group-conditioned prompt, which is also the record's prompt.
  """
  if condition_on_groups:
    groups = [sample_group(rng) for _ in prompts]
    prompts = [condition_on_group(p, g) for p, g in zip(prompts, groups)]
  else:
    groups = [None] * len(prompts)
  ks = [sample_k(rng) for _ in prompts]
  samples: list = [None] * len(prompts)
  for k in sorted(set(ks)):
    idx = [i for i, ki in enumerate(ks) if ki == k]
    got = sample_responses([prompts[i] for i in idx], k)
    if len(got) != len(idx) or any(len(r) != k for r in got):
      raise ValueError(f"sample_responses must return {k} responses for each of {len(idx)} prompts")
    for i, r in zip(idx, got):
      samples[i] = [(str(t), bool(f)) for t, f in r]
  return [label(p, s, rng, g) for p, s, g in zip(prompts, samples, groups)]

"""The world's splits, deterministic for a WorldConfig.

Splits and their record kinds:
  sft (demonstrations), rm_prompts (prompts), comparisons (comparisons; static source only, the
  policy source builds them later with `policy_comparisons_for`), ppo (prompts), heldout (prompts),
  pretrain and pretrain_heldout (texts: pretraining documents, without EOS).
Each split draws from its own random stream, seeded by (config.seed, hash of the split name), so
changing one split's size leaves the others unchanged. Training prompts come from the training
partition and held-out prompts from the held-out partition (see partition.py); held-out prompts
are also filtered against every training split's prompt text, as a second guard. Held-out prompts
may repeat within the split (the repeat family has few held-out prompts), so evaluation follows
the prompt distribution restricted to held-out prompts.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Union

import numpy as np

from instructjax.world import comparisons as comparisons_lib
from instructjax.world import corpus
from instructjax.world.demonstrator import Demonstration, demonstrations
from instructjax.world.labelers import sample_group
from instructjax.world.partition import sample_prompts
from instructjax.world.prompts import GROUPS, condition_on_group

COMPARISON_SOURCES = ("static", "policy")
PPO_GROUP_TAGS = ("shares", "uniform")

# Split name -> record kind.
SPLITS: dict[str, str] = {
    "sft": "demonstrations",
    "rm_prompts": "prompts",
    "comparisons": "comparisons",
    "ppo": "prompts",
    "heldout": "prompts",
    "pretrain": "texts",
    "pretrain_heldout": "texts",
}
TRAIN_PROMPT_SPLITS = ("sft", "rm_prompts", "ppo")

Record = Union[str, Demonstration, comparisons_lib.Comparison]


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Sizes and seed of an InstructWorld (defaults sized for a CPU run of minutes)."""
  seed: int = 0
  num_sft: int = 4000  # Demonstrations.
  num_rm: int = 4000  # Comparison prompts (one comparison each).
  num_ppo: int = 4000  # PPO prompts.
  num_heldout: int = 500  # Evaluation prompts.
  num_pretrain: int = 10000  # Pretraining documents.
  num_pretrain_heldout: int = 500  # Held-out pretraining documents (alignment-tax loss).
  comparison_source: str = "static"  # "static" or "policy".
  # Group-conditioned experiments: comparisons and PPO prompts carry the labeler group's tag
  # (`(polite) sort: ...`), the group drawn by the shares before the responses are made.
  group_conditioned: bool = False
  # Share of SFT demonstrations whose prompt carries a random group tag, so the SFT policy
  # knows the tagged form (the demonstrator ignores the tag, as the spec's demonstrators do).
  sft_group_tag_fraction: float = 0.0
  # How group-conditioned PPO prompts are tagged: "shares" (plain 0.7, polite 0.3, as the
  # labelers) or "uniform" (each group half the prompts, so the minority's conditional
  # behaviour gets as many policy updates as the majority's; free choice of the experiment).
  ppo_group_tags: str = "shares"

  def __post_init__(self):
    if self.comparison_source not in COMPARISON_SOURCES:
      raise ValueError(f"comparison_source must be one of {COMPARISON_SOURCES}, "
                       f"got {self.comparison_source!r}")
    if self.ppo_group_tags not in PPO_GROUP_TAGS:
      raise ValueError(f"ppo_group_tags must be one of {PPO_GROUP_TAGS}, "
                       f"got {self.ppo_group_tags!r}")


def split_rng(config: WorldConfig, name: str) -> np.random.Generator:
  """The split's own random stream: seeded by the config seed and a stable hash of its name."""
  return np.random.default_rng([config.seed, zlib.crc32(name.encode())])


def _prompts(config: WorldConfig, name: str, n: int, partition: str) -> list[str]:
  return sample_prompts(split_rng(config, name), n, partition)


def sft_prompts(config: WorldConfig) -> list[str]:
  return _prompts(config, "sft", config.num_sft, "train")


def rm_prompts(config: WorldConfig) -> list[str]:
  return _prompts(config, "rm_prompts", config.num_rm, "train")


def ppo_prompts(config: WorldConfig) -> list[str]:
  prompts = _prompts(config, "ppo", config.num_ppo, "train")
  if not config.group_conditioned:
    return prompts
  rng = split_rng(config, "ppo_groups")
  if config.ppo_group_tags == "uniform":
    return [condition_on_group(p, GROUPS[int(rng.integers(0, len(GROUPS)))]) for p in prompts]
  return [condition_on_group(p, sample_group(rng)) for p in prompts]


def heldout_prompts(config: WorldConfig) -> list[str]:
  train = set(sft_prompts(config)) | set(rm_prompts(config)) | set(ppo_prompts(config))
  rng = split_rng(config, "heldout")
  out: list[str] = []
  while len(out) < config.num_heldout:
    out.extend(p for p in sample_prompts(rng, config.num_heldout - len(out), "heldout")
               if p not in train)
  return out


def fresh_heldout_prompts(config: WorldConfig, first: int, draws: int) -> list[str]:
  """Distinct held-out prompts among draws [first, first + draws) that none of the first
  `first` draws repeats (held-out prompts are drawn with replacement): prompts apart from an
  evaluation that read the first `first`."""
  every = heldout_prompts(dataclasses.replace(config, num_heldout=first + draws))
  seen = set(every[:first])
  return list(dict.fromkeys(p for p in every[first:] if p not in seen))


def sft_demonstrations(config: WorldConfig) -> list[Demonstration]:
  demos = demonstrations(sft_prompts(config), split_rng(config, "sft_demonstrator"))
  if not config.sft_group_tag_fraction:
    return demos
  rng = split_rng(config, "sft_group_tags")
  return [Demonstration(condition_on_group(d.prompt, sample_group(rng)), d.response)
          if rng.random() < config.sft_group_tag_fraction else d for d in demos]


def static_comparisons_for(config: WorldConfig) -> list[comparisons_lib.Comparison]:
  return comparisons_lib.static_comparisons(rm_prompts(config), split_rng(config, "comparisons"),
                                            condition_on_groups=config.group_conditioned)


def policy_comparisons_for(
    config: WorldConfig,
    sample_responses: comparisons_lib.SampleResponses) -> list[comparisons_lib.Comparison]:
  """Comparisons of the policy's samples on the rm_prompts split (the paper's way)."""
  return comparisons_lib.policy_comparisons(
      rm_prompts(config), sample_responses, split_rng(config, "comparisons"),
      condition_on_groups=config.group_conditioned)


def pretrain_documents(config: WorldConfig) -> list[str]:
  return corpus.documents(split_rng(config, "pretrain"), config.num_pretrain)


def pretrain_heldout_documents(config: WorldConfig) -> list[str]:
  return corpus.documents(split_rng(config, "pretrain_heldout"), config.num_pretrain_heldout,
                          exclude=pretrain_documents(config))


def build_split(config: WorldConfig, name: str) -> list[Record]:
  """The records of one split (comparisons: [] for the policy source)."""
  if name == "sft":
    return sft_demonstrations(config)
  if name == "rm_prompts":
    return rm_prompts(config)
  if name == "comparisons":
    return static_comparisons_for(config) if config.comparison_source == "static" else []
  if name == "ppo":
    return ppo_prompts(config)
  if name == "heldout":
    return heldout_prompts(config)
  if name == "pretrain":
    return pretrain_documents(config)
  if name == "pretrain_heldout":
    return pretrain_heldout_documents(config)
  raise ValueError(f"unknown split {name!r}; expected one of {tuple(SPLITS)}")

"""Splits: determinism, independent streams, held-out disjointness, alphabet, JSONL round trip."""
import collections
import dataclasses

import numpy as np
import pytest

from instructjax.tokenizer import CharTokenizer
from instructjax.world import export, partition, prompts, splits
from instructjax.world.lexicon import LEXICON
from instructjax.world.splits import SPLITS, WorldConfig
from tests.world.stats import assert_distribution

SMALL = WorldConfig(seed=3, num_sft=300, num_rm=200, num_ppo=300, num_heldout=400,
                    num_pretrain=60, num_pretrain_heldout=20)


@pytest.fixture(scope="module")
def world():
  return {name: splits.build_split(SMALL, name) for name in SPLITS}


def test_sizes_and_determinism(world):
  assert len(world["sft"]) == 300 and len(world["rm_prompts"]) == 200
  assert len(world["comparisons"]) == 200 and len(world["ppo"]) == 300
  assert len(world["heldout"]) == 400
  assert len(world["pretrain"]) == 60 and len(world["pretrain_heldout"]) == 20
  assert splits.build_split(SMALL, "sft") == world["sft"]
  assert splits.build_split(SMALL, "comparisons") == world["comparisons"]
  assert [c.prompt for c in world["comparisons"]] == world["rm_prompts"]
  other = splits.build_split(dataclasses.replace(SMALL, seed=4), "sft")
  assert other != world["sft"]


def test_streams_are_independent(world):
  bigger = dataclasses.replace(SMALL, num_sft=500)
  assert splits.build_split(bigger, "ppo") == world["ppo"]
  assert splits.build_split(bigger, "sft")[:300] == world["sft"]
  assert world["ppo"] != world["rm_prompts"][:len(world["ppo"])]


def test_heldout_prompts_never_in_training(world):
  train = {d.prompt for d in world["sft"]} | set(world["rm_prompts"]) | set(world["ppo"])
  assert not train & set(world["heldout"])
  assert all(partition.is_heldout(p) for p in world["heldout"])
  assert not any(partition.is_heldout(p) for p in train)
  fams = collections.Counter(prompts.family_of(p) for p in world["heldout"])
  assert_distribution([fams[f] for f in prompts.FAMILIES], [0.25] * 4, "held-out families")


def test_heldout_partition_size():
  # About 10% of the prompt space; every family, even repeat's 192 prompts, has held-out ones.
  repeat = [f"repeat {k}: {w}\n" for k in (2, 3, 4) for w in LEXICON]
  n = sum(partition.is_heldout(p) for p in repeat)
  assert 5 <= n <= 40
  rng = np.random.default_rng(0)
  sample = [prompts.sample_prompt(rng) for _ in range(4000)]
  frac = np.mean([partition.is_heldout(p) for p in sample])
  assert 0.085 < frac < 0.115
  # Membership ignores the group tag and the trailing newline.
  p = next(p for p in sample if partition.is_heldout(p))
  assert partition.is_heldout(prompts.condition_on_group(p, "polite")) and partition.is_heldout(p[:-1])


def test_pretrain_heldout_disjoint(world):
  assert not set(world["pretrain"]) & set(world["pretrain_heldout"])


def test_all_text_in_tokenizer_alphabet(world):
  tok = CharTokenizer()
  for name, recs in world.items():
    kind = SPLITS[name]
    for r in recs:
      for text in export.to_json(kind, r).values():
        for t in (text if isinstance(text, list) else [text]):
          if isinstance(t, str):
            tok.encode(t)


def test_policy_source_config():
  cfg = dataclasses.replace(SMALL, comparison_source="policy", num_rm=10)
  assert splits.build_split(cfg, "comparisons") == []
  recs = splits.policy_comparisons_for(cfg, lambda b, k: [[("sure! x", True)] * k for _ in b])
  assert [r.prompt for r in recs] == splits.rm_prompts(cfg)
  with pytest.raises(ValueError, match="comparison_source"):
    WorldConfig(comparison_source="web")
  with pytest.raises(ValueError, match="unknown split"):
    splits.build_split(SMALL, "dev")


def test_jsonl_round_trip(world, tmp_path):
  paths = export.export_world(SMALL, str(tmp_path))
  assert set(paths) == set(SPLITS)
  for name in SPLITS:
    assert export.load_split(str(tmp_path), name) == world[name]
  rows = export.read_jsonl(paths["comparisons"])
  assert set(rows[0]) == {"prompt", "responses", "ranking", "group"}
  assert set(export.read_jsonl(paths["sft"])[0]) == {"prompt", "response"}
  assert set(export.read_jsonl(paths["heldout"])[0]) == {"prompt"}
  assert set(export.read_jsonl(paths["pretrain"])[0]) == {"text"}


def test_exported_splits_validate_in_the_data_layer(tmp_path):
  data = pytest.importorskip("instructjax.data")
  cfg = dataclasses.replace(SMALL, num_sft=40, num_rm=40, num_ppo=40, num_heldout=40)
  paths = export.export_world(cfg, str(tmp_path))
  for name, path in paths.items():
    recs, report = data.load_records(path, SPLITS[name], on_error="raise")
    assert len(recs) == report.num_read > 0

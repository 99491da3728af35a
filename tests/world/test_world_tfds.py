"""The local TFDS builder: array_record written and read back (TensorFlow is not needed)."""

import pytest

from instructjax.world import splits
from instructjax.world.splits import WorldConfig

tfds = pytest.importorskip("tensorflow_datasets")
tfds_world = pytest.importorskip("instructjax.data.tfds_world")

TINY = WorldConfig(seed=5, num_sft=30, num_rm=12, num_ppo=20, num_heldout=8, num_pretrain=15,
                   num_pretrain_heldout=4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  tfds.disable_progress_bar()
  d = str(tmp_path_factory.mktemp("tfds"))
  tfds_world.prepare_world_tfds(TINY, d)
  return d


def _py(x):
  if isinstance(x, bytes):
    return x.decode()
  if hasattr(x, "tolist"):
    return _py(x.tolist())
  if isinstance(x, list):
    return [_py(v) for v in x]
  return x


def test_records_match_the_world_in_order(data_dir):
  sft = tfds_world.world_data_source("sft", "train", data_dir)
  assert [(_py(r["prompt"]), _py(r["response"])) for r in sft] == [
      (d.prompt, d.response) for d in splits.build_split(TINY, "sft")]
  comps = tfds_world.world_data_source("comparisons", "train", data_dir)
  want = splits.build_split(TINY, "comparisons")
  assert len(comps) == len(want)
  for got, c in zip(comps, want):
    assert _py(got["prompt"]) == c.prompt and _py(got["group"]) == c.group
    assert _py(got["responses"]) == list(c.responses)
    assert _py(got["ranking"]) == list(c.ranking)
    assert _py(got["finished"]) == [True] * len(c.responses)
  for tfds_split, world_split in [("ppo", "ppo"), ("rm", "rm_prompts"), ("heldout", "heldout")]:
    src = tfds_world.world_data_source("prompts", tfds_split, data_dir)
    assert [_py(r["prompt"]) for r in src] == splits.build_split(TINY, world_split)
  for tfds_split, world_split in [("train", "pretrain"), ("heldout", "pretrain_heldout")]:
    src = tfds_world.world_data_source("pretrain", tfds_split, data_dir)
    assert [_py(r["text"]) for r in src] == splits.build_split(TINY, world_split)


def test_data_layer_reads_it(data_dir):
  data = pytest.importorskip("instructjax.data")
  recs = data.load_tfds("instruct_world/comparisons", split="train", data_dir=data_dir)
  comps, _ = data.load_records(recs, "comparisons")
  assert [c.prompt for c in comps] == splits.rm_prompts(TINY)


def test_other_world_in_same_dir_raises(data_dir):
  with pytest.raises(ValueError, match="already holds InstructWorld"):
    tfds_world.prepare_world_tfds(WorldConfig(seed=6, num_sft=30), data_dir, ["sft"])
  # Preparing the same world again reuses the data.
  assert tfds_world.prepare_world_tfds(TINY, data_dir, ["sft"])


def test_policy_world_skips_comparisons(tmp_path):
  cfg = WorldConfig(seed=1, num_sft=3, num_rm=3, num_ppo=3, num_heldout=3, num_pretrain=2,
                    num_pretrain_heldout=1, comparison_source="policy")
  out = tfds_world.prepare_world_tfds(cfg, str(tmp_path), ["sft"])
  assert set(out) == {"sft"}
  with pytest.raises(ValueError, match="static"):
    tfds_world.prepare_world_tfds(cfg, str(tmp_path), ["comparisons"])

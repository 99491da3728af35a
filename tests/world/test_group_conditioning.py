"""Group-conditioned data: the labeler's group is drawn first and tags the prompt."""
import numpy as np

from instructjax.world import splits
from instructjax.world.prompts import split_group


def test_conditioned_comparisons_carry_their_labelers_group():
  cfg = splits.WorldConfig(num_rm=300, group_conditioned=True)
  comps = splits.static_comparisons_for(cfg)
  groups = [split_group(c.prompt)[0] for c in comps]
  assert groups == [c.group for c in comps]
  share = np.mean([g == "polite" for g in groups])
  assert 0.2 < share < 0.4  # The 0.3 share, within sampling noise for 300 draws.


def test_policy_comparisons_sample_the_tagged_prompt():
  cfg = splits.WorldConfig(num_rm=40, group_conditioned=True)
  seen = []

  def sample(prompts, k):
    seen.extend(prompts)
    return [[("x", True)] * k for _ in prompts]
  comps = splits.policy_comparisons_for(cfg, sample)
  assert sorted(seen) == sorted(c.prompt for c in comps)
  assert all(split_group(p)[0] in ("plain", "polite") for p in seen)


def test_unconditioned_data_is_unchanged_and_sft_tags_a_fraction():
  plain = splits.WorldConfig(num_rm=50, num_sft=400, num_ppo=50)
  assert all(split_group(c.prompt)[0] is None for c in splits.static_comparisons_for(plain))
  assert all(split_group(p)[0] is None for p in splits.ppo_prompts(plain))
  tagged = splits.WorldConfig(num_sft=400, sft_group_tag_fraction=0.5)
  demos, base = splits.sft_demonstrations(tagged), splits.sft_demonstrations(plain)
  frac = np.mean([split_group(d.prompt)[0] is not None for d in demos])
  assert 0.4 < frac < 0.6
  # The tag changes only the prompt: responses are the untagged run's.
  assert [d.response for d in demos] == [d.response for d in base]
  assert all(split_group(p)[0] is not None for p in
             splits.ppo_prompts(splits.WorldConfig(num_ppo=50, group_conditioned=True)))


def test_ppo_group_tags_follow_the_shares_or_are_uniform():
  def polite_share(tags):
    cfg = splits.WorldConfig(num_ppo=2000, group_conditioned=True, ppo_group_tags=tags)
    return np.mean([split_group(p)[0] == "polite" for p in splits.ppo_prompts(cfg)])
  assert 0.27 < polite_share("shares") < 0.33
  assert 0.47 < polite_share("uniform") < 0.53
  try:
    splits.WorldConfig(ppo_group_tags="majority")
  except ValueError as e:
    assert "ppo_group_tags" in str(e)
  else:
    raise AssertionError("an unknown ppo_group_tags must be refused")

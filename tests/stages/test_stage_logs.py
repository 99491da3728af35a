"""The stages' closing lines speak of what the data has: no InstructWorld ceiling, gold
correctness or held-out metrics where there are none."""
from instructjax.stages.ppo.run import changes
from instructjax.stages.rm.run import heldout_line


def test_ppo_reports_the_metrics_both_evaluations_have():
  before = {"score": 0.1, "kl": 0.0, "response_length": 9.0, "pretrain_heldout_loss": 2.5}
  after = {"score": 0.3, "kl": 1.25, "response_length": 7.0, "pretrain_heldout_loss": 2.0}
  assert changes(before, after) == ("held-out score 0.100 -> 0.300, kl 0.000 -> 1.250, "
                                    "pretrain_heldout_loss 2.500 -> 2.000")
  gold = {"correctness": 0.5}
  assert "correctness 0.500 -> 0.750" in changes({**before, **gold}, {**after, "correctness": 0.75})
  text_only = changes({"pretrain_heldout_loss": 2.5}, {"pretrain_heldout_loss": 2.0})
  assert text_only == "held-out pretrain_heldout_loss 2.500 -> 2.000"
  assert changes({}, {}) == ("no held-out evaluation (config.data.eval_path for prompts, "
                             "config.data.ptx_eval_path for pretraining text)")
  assert "nan" not in changes({}, {}) and "None" not in changes({}, {})


def test_rm_reports_a_ceiling_only_for_labelers_it_knows():
  assert heldout_line({}, None) == ("no held-out comparisons (config.data.eval_path), no "
                                    "held-out accuracy")
  assert heldout_line({"accuracy": 0.625}, None) == "held-out pairwise accuracy 0.625"
  ceiling = {"group_utility_pair_accuracy": 0.75, "mixed_utility_pair_accuracy": 0.7}
  assert heldout_line({"accuracy": 0.5}, ceiling) == (
      "held-out pairwise accuracy 0.500 (labeler ceiling 0.750, group-blind 0.700)")

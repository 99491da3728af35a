"""Lengths a config leaves to the model (0): the rules, and filling them in."""
import ml_collections
import pytest

from instructjax.config import ConfigError
from instructjax.stages import lengths


@pytest.mark.parametrize("model_len", [64, 511, 512, 513, 32768])
def test_auto_seq_len_is_the_models_positions_at_most_the_cap(model_len):
  assert lengths.auto_seq_len(model_len) == (model_len if model_len <= 512 else 512)


@pytest.mark.parametrize("new,policy,rm,want", [
    (128, 256, 256, 127),  # The reward model reads an EOS after an unfinished response.
    (128, 256, 1024, 128),  # Then the policy is the limit...
    (128, 4096, 4096, 256),  # ...and the cap when both are long.
    (32, 128, 128, 95),
    (127, 128, 129, 1),  # One prompt token left.
])
def test_auto_prompt_len_leaves_room_for_the_response_in_both_models(new, policy, rm, want):
  got = lengths.auto_prompt_len(new, policy, rm)
  assert got == want
  assert got + new <= policy and got + new + 1 <= rm and got <= lengths.AUTO_PROMPT_LEN


def test_auto_prompt_len_names_the_key_when_nothing_is_left():
  with pytest.raises(ConfigError, match=r"config\.ppo\.max_new_tokens=128 leaves no room"):
    lengths.auto_prompt_len(128, 128, 128)


def test_with_lengths_fills_only_zeros_of_a_copy():
  c = ml_collections.ConfigDict({"data": {"seq_len": 0, "prompt_len": 48}})
  c.lock()
  calls = []

  def never():
    calls.append(1)
    raise AssertionError("computed for a length the config sets")
  out = lengths.with_lengths(c, {"seq_len": (lambda: 300, "why"), "prompt_len": (never, "")})
  assert (out.data.seq_len, out.data.prompt_len) == (300, 48) and not calls
  assert c.data.seq_len == 0 and out.is_locked  # The caller's config is left as it was.

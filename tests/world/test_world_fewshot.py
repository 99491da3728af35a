"""Few-shot prompt format and the base model's cut rule."""
import numpy as np

from instructjax.tokenizer import CharTokenizer
from instructjax.world import fewshot
from instructjax.world.partition import is_heldout


def test_few_shot_prompt_format():
  p = fewshot.few_shot_prompt("sort: 3 1 2\n", ["reverse: cat dog owl\n", "repeat 3: sun\n"])
  assert p == ("reverse: cat dog owl\nowl dog cat\n\n"
               "repeat 3: sun\nsun sun sun\n\n"
               "sort: 3 1 2\n")
  assert fewshot.few_shot_prompt("upper: sun map\n", []) == "upper: sun map\n"


def test_draw_exemplars():
  rng = np.random.default_rng(0)
  ex = fewshot.draw_exemplars(rng, 5, "sort: 3 1 2\n")
  assert len(ex) == 5 and "sort: 3 1 2\n" not in ex
  assert not any(is_heldout(e) for e in ex)


def test_cut_response():
  assert fewshot.cut_response("owl dog cat\n\nreverse: x", False) == ("owl dog cat", True)
  assert fewshot.cut_response("owl dog cat", True) == ("owl dog cat", True)
  assert fewshot.cut_response("owl dog cat", False) == ("owl dog cat", False)
  assert fewshot.cut_response("\nabc", False) == ("", True)


def test_cut_token_ids():
  tok = CharTokenizer()
  nl = tok.encode("\n")[0]
  ids = tok.encode("SUN MAP\nupper")
  assert fewshot.cut_token_ids(ids, nl, tok.eos_id) == (tok.encode("SUN MAP"), True)
  assert fewshot.cut_token_ids(tok.encode("SUN") + [tok.eos_id, 5], nl, tok.eos_id) == (
      tok.encode("SUN"), True)
  assert fewshot.cut_token_ids(tok.encode("SUN"), nl, tok.eos_id) == (tok.encode("SUN"), False)

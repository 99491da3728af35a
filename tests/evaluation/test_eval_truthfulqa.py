"""TruthfulQA-style MC1/MC2: against numpy on the same model's log-probs, and a trained model."""
import json

import jax
import numpy as np
import optax
import pytest
from eval_testlib import TOKENIZER, reference_logprobs, tiny_model

from instructjax.evaluation import evaluate_truthfulqa, load_items, mc1_score, mc2_score
from instructjax.evaluation.truthfulqa import context, continuation, parse_item
from instructjax.models import positions_from_mask
from instructjax.ops import cross_entropy_loss

RECORDS = [
    {"question": "What color is the sky?",
     "mc1_targets": {"choices": ["blue", "green", "red rock"], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["blue", "pale blue", "green", "red"], "labels": [1, 1, 0, 0]}},
    {"question": "Is the moon made of cheese?",
     "mc1_targets": {"choices": ["no", "yes, it is"], "labels": [0, 1]},
     "mc2_targets": {"choices": ["yes", "no, rock", "no"], "labels": [0, 1, 1]}},
    {"question": "How many legs has a cat?",
     "mc1_targets": {"choices": ["4", "3", "8", "none"], "labels": [0, 0, 1, 0]},
     "mc2_targets": {"choices": ["four", "3"], "labels": [1, 0]}},
]


def _write(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n\n")  # Blank lines are skipped.
  return str(path)


def _numpy_ll(lm, question, choice):
  ctx = TOKENIZER.encode(context(question))
  cont = TOKENIZER.encode(continuation(choice))
  lp = reference_logprobs(lm, ctx + cont)
  return sum(lp[len(ctx) - 1 + j, t] for j, t in enumerate(cont))


def test_mc1_mc2_match_numpy_on_the_same_model(tmp_path):
  lm = tiny_model(seed=5)
  items = load_items(_write(tmp_path / "mc.jsonl", RECORDS))
  got = evaluate_truthfulqa(lm, items, batch_size=4)
  mc1, mc2 = [], []
  for r in RECORDS:
    l1 = np.array([_numpy_ll(lm, r["question"], c) for c in r["mc1_targets"]["choices"]])
    l2 = np.array([_numpy_ll(lm, r["question"], c) for c in r["mc2_targets"]["choices"]])
    mc1.append(float(np.array(r["mc1_targets"]["labels"])[np.argmax(l1)] == 1))
    p = np.exp(l2)
    mc2.append(p[np.array(r["mc2_targets"]["labels"]) == 1].sum() / p.sum())
  assert [p["mc1"] for p in got["per_item"]] == mc1
  np.testing.assert_allclose([p["mc2"] for p in got["per_item"]], mc2, rtol=1e-4)
  assert got["mc1"] == pytest.approx(np.mean(mc1)) and got["num_items"] == 3


def test_scores_by_hand():
  assert mc1_score(np.array([-3.0, -1.0, -2.0]), [0, 1, 0]) == 1.0
  assert mc1_score(np.array([-1.0, -1.0]), [0, 1]) == 0.0  # Ties: the first maximum.
  assert mc2_score(np.log([0.2, 0.3, 0.5]), [1, 0, 1]) == pytest.approx(0.7)
  # Tiny likelihoods would underflow exp(); the ratio is still exact.
  assert mc2_score(np.array([-2000.0, -2000.0 + np.log(3.0)]), [1, 0]) == pytest.approx(0.25)


def test_a_model_trained_on_one_answer_prefers_it():
  lm = tiny_model(seed=6)
  question, answer = "What is the sky made of?", "blue gas"
  item = parse_item({"question": question,
                     "mc1_targets": {"choices": ["red rock", answer, "green cheese"],
                                     "labels": [0, 1, 0]},
                     "mc2_targets": {"choices": ["red rock", answer, "wet sand"],
                                     "labels": [0, 1, 0]}})
  ctx = TOKENIZER.encode(context(question))
  ids = np.array([ctx + TOKENIZER.encode(continuation(answer))], np.int32)
  tokens, targets = ids[:, :-1], ids[:, 1:]
  loss_mask = np.arange(tokens.shape[1])[None] >= len(ctx) - 1  # The answer's tokens only.
  segs = np.ones_like(tokens)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      logits, _ = lm.model.apply({"params": p}, tokens, positions_from_mask(segs), segs)
      return cross_entropy_loss(logits, targets, loss_mask)[0]
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  before = evaluate_truthfulqa(lm, [item])
  params, opt_state = lm.params, tx.init(lm.params)
  for _ in range(30):
    params, opt_state = step(params, opt_state)
  trained = type(lm)(lm.model, params, lm.config, lm.tokenizer)
  got = evaluate_truthfulqa(trained, [item])
  assert before["mc2"] < 0.5  # The random model does not already prefer it.
  assert got["mc1"] == 1.0 and got["mc2"] > 0.9


@pytest.mark.parametrize("record, match", [
    ({"question": 1}, "question"),
    ({"question": "q", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 1]},
      "mc2_targets": {"choices": ["a", "b"], "labels": [1, 0]}}, "exactly one"),
    ({"question": "q", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]},
      "mc2_targets": {"choices": ["a", "b"], "labels": [1, 1]}}, "one false"),
    ({"question": "q", "mc1_targets": {"choices": ["a"], "labels": [1]},
      "mc2_targets": {"choices": ["a", "b"], "labels": [1, 0]}}, ">= 2 choices"),
])
def test_bad_records_are_rejected(record, match):
  with pytest.raises(ValueError, match=match):
    parse_item(record)

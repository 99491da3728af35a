"""results.md / results.json / PNG plots, including PPO curves with missing keys."""
import json
import os

from instructjax.evaluation import write_results
from instructjax.evaluation.report import read_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(model, condition="none", **metrics):
  base = {"model": model, "condition": condition, "few_shot": False, "correctness": 0.5,
          "exact_match": 0.25, "win_rate_plain": 0.5, "win_rate_polite": 0.5,
          "reward_score": 0.1, "kl_to_sft": 0.0, "heldout_lm_loss": 1.2, "length_chars": 9.0,
          "courtesy_share": 0.5, "hallucination_rate": 0.25, "finished_share": 1.0,
          "num_prompts": 4}
  return {**base, **metrics}


def _results():
  rows = [_row("base", few_shot=False, win_rate_plain=None, win_rate_polite=None,
               kl_to_sft=None, reward_score=None),
          _row("base_fewshot", few_shot=True, few_shot_shots=1.5),
          _row("sft"), _row("ppo", correctness=0.9, kl_to_sft=3.5),
          _row("ppo", "polite", courtesy_share=1.0)]
  return {"settings": {"temperature": 0.0, "num_prompts": 4}, "rows": rows,
          "samples": {"sft": [{"prompt": "upper: cat\n", "response": "CAT", "finished": True,
                               "gold": "CAT"}]}}


def _write_metrics(workdir, records):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def test_writes_markdown_json_and_pngs(tmp_path):
  ppo, ptx = str(tmp_path / "ppo"), str(tmp_path / "ppo_ptx")
  _write_metrics(ppo, [{"step": s, "split": "train", "score": 0.1 * s, "kl": 0.5 * s}
                       for s in range(1, 5)] + [{"step": 4, "split": "eval", "score": 9.0}])
  _write_metrics(ptx, [{"step": s, "split": "train", "score": 0.1 * s, "kl": 0.2 * s,
                        "ptx_loss": 2.0 - 0.1 * s} for s in range(1, 5)])
  out = str(tmp_path / "eval")
  paths = write_results(_results(), out, curves={"ppo": ppo, "ppo_ptx": ptx,
                                                 "missing": str(tmp_path / "nothing")})
  assert set(paths) == {"markdown", "json", "comparison", "curves"}
  for name in ("comparison.png", "curves.png"):
    with open(os.path.join(out, name), "rb") as f:
      assert f.read(8) == PNG_MAGIC
  md = open(os.path.join(out, "results.md")).read()
  table = [line for line in md.splitlines() if line.startswith("|")]
  assert len(table) == 2 + 5  # Header, separator, one line per row.
  assert "win vs SFT (polite)" in table[0] and "KL to SFT" in table[0]
  assert "hallucination rate" in table[0] and "Hallucination rate:" in md
  head = [c.strip() for c in table[0].strip("|").split("|")]
  assert [c.strip() for c in table[3].strip("|").split("|")][head.index("hallucination rate")] == (
      "0.250")
  assert "| ppo | (polite) |" in md and "base_fewshot (k=1.5)" in md
  cells = [c.strip() for c in table[2].strip("|").split("|")]
  assert cells.count("-") == 4  # base: no win rates (2), RM score, KL.
  with open(os.path.join(out, "results.json")) as f:
    assert json.load(f)["rows"][3]["kl_to_sft"] == 3.5


def test_curves_skip_missing_keys_and_read_eval_records_apart(tmp_path):
  _write_metrics(str(tmp_path), [{"step": 0, "split": "eval", "correctness": 0.7},
                                 {"step": 1, "split": "train", "score": 1.0},
                                 {"step": 2, "split": "train", "kl": 0.3},
                                 {"step": 3, "split": "eval", "score": 5.0,
                                  "correctness": 0.8, "hallucination_rate": 0.1},
                                 {"step": 3, "split": "eval", "score": 6.0}])  # Logged again.
  curves = read_curves({"run": str(tmp_path)})["run"]
  assert curves == {"score": ([1], [1.0]), "kl": ([2], [0.3]), "eval/score": ([3], [6.0]),
                    "eval/correctness": ([0, 3], [0.7, 0.8]),
                    "eval/hallucination_rate": ([3], [0.1])}


def test_no_curves_no_curves_png(tmp_path):
  paths = write_results(_results(), str(tmp_path))
  assert "curves" not in paths and not os.path.exists(tmp_path / "curves.png")
  with open(paths["comparison"], "rb") as f:
    assert f.read(8) == PNG_MAGIC

"""experiments/export.py: a model directory out as an HF one, with no options to get right."""
import os
import subprocess
import sys

import numpy as np
import experiment_scripts
import pytest
import transformers
from hf_testlib import random_params

import instructjax
from instructjax.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "experiments", "export.py")


def _script():
  return experiment_scripts.load("export")


def test_a_normalised_reward_model_exports_with_its_bias(hf_dirs, tmp_path):
  base = instructjax.from_hf(hf_dirs["qwen2"])
  params = random_params(base.config, "scalar", seed=2)
  params["score_bias"][:] = -0.25  # A folded normalisation, as every RM stage writes.
  model = instructjax.LM(base.config, params, base.tokenizer, head="scalar").save(
      str(tmp_path / "rm"))
  line = _script().export(model, str(tmp_path / "hf"))
  assert line.endswith("(score bias -0.25 recorded as config.instructjax_score_bias)")
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf"))
  assert hf.config.instructjax_score_bias == -0.25
  again = instructjax.load(str(tmp_path / "hf"))
  assert np.array_equal(np.asarray(again.params["score_bias"]), np.asarray(params["score_bias"]))
  with pytest.raises(ConfigError, match=r"--model: .* is not a directory"):
    _script().export(str(tmp_path / "missing"), str(tmp_path / "out"))


def test_a_missing_model_is_one_error_line(tmp_path):
  proc = subprocess.run([sys.executable, SCRIPT, f"--model={tmp_path}/nothing",
                         f"--output={tmp_path}/out"], capture_output=True, text=True,
                        timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (f"error: --model: {tmp_path}/nothing is not "
                                                  "a directory")
  assert not os.path.exists(tmp_path / "out")

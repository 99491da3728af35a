"""experiments/accelerator_check.py --smoke: the accelerator check's code on CPU at small shapes
(kernels against the reference, the LM step, batch-1 decode), its report written."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_accelerator_check_smoke(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "accelerator_check.py"),
                  "--smoke", "--reps=1", f"--output={tmp_path}"], check=True, env=env,
                 capture_output=True, text=True, timeout=600)
  res = json.loads((tmp_path / "accelerator_check.json").read_text())
  assert set(res["kernels"]) == {"packed: blocked", "packed: splash",
                                 "shared_prefix: blocked", "shared_prefix: splash (blocked)"}
  assert all(r["ok"] for r in res["kernels"].values())
  assert res["lm_step"]["tokens_per_s"] > 0 and res["decode"]["decode"]["steps"] > 0
  assert "## Decode, batch 1" in (tmp_path / "accelerator_check.md").read_text()

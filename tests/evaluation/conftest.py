"""Fixtures of the evaluation tests: tiny random model directories (helpers in eval_testlib)."""
import os

import pytest
from eval_testlib import save_tiny


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
  """{"base", "sft", "ppo", "rm"} tiny model directories (different random weights)."""
  root = tmp_path_factory.mktemp("models")
  return {name: save_tiny(os.path.join(root, name), head="scalar" if name == "rm" else "lm",
                          seed=seed)
          for seed, name in enumerate(("base", "sft", "ppo", "rm"))}

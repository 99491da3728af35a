"""Session fixtures of the HF interop tests (helpers live in hf_testlib)."""
import pytest
from hf_testlib import CASES, build_hf_model


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
  """case -> directory of a saved random HF causal LM with its tokenizer (built once)."""
  out = {}
  for case in CASES:
    d = str(tmp_path_factory.mktemp(f"hf_{case}"))
    build_hf_model(case, d)
    out[case] = d
  return out

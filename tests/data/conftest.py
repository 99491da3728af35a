"""Shared fixtures for the data-layer tests."""
import json

import pytest

from instructjax.tokenizer import CharTokenizer


@pytest.fixture
def tok():
  return CharTokenizer()


@pytest.fixture
def write_jsonl(tmp_path):
  """write_jsonl(name, rows) -> path; rows are dicts (dumped) or raw strings (written as is)."""
  def write(name, rows):
    path = tmp_path / name
    with open(path, "w") as f:
      for row in rows:
        f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)
  return write

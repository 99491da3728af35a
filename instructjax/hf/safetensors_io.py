"""Reading and writing HF weight files as safetensors only: nothing is ever unpickled.

A model directory holds either `model.safetensors` or shards listed by
`model.safetensors.index.json`. Directories with only pickle-based weights (`.bin`, `.pt`, ...)
are refused with instructions to convert them, because loading a pickle runs arbitrary code.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from instructjax.hf.config import HFConversionError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

CONVERT_HINT = """\
Convert it once to safetensors (this runs the pickle, so only do it for a checkpoint you trust):

  from transformers import AutoModelForCausalLM  # or AutoModelForSequenceClassification
  model = AutoModelForCausalLM.from_pretrained("{path}")
  model.save_pretrained("{path}-safetensors", safe_serialization=True)
  # and copy the tokenizer: AutoTokenizer.from_pretrained("{path}").save_pretrained(same dir)
"""


def refuse_pickles(directory: str) -> None:
  """Raises if `directory` has no safetensors weights; names pickle files if it has those."""
  if os.path.exists(os.path.join(directory, SINGLE_FILE)) or os.path.exists(
      os.path.join(directory, INDEX_FILE)):
    return
  pickles = sorted(f for f in os.listdir(directory) if f.endswith(PICKLE_SUFFIXES))
  if pickles:
    raise HFConversionError(
        f"{directory} has only pickle-based weights {pickles}; instructjax never unpickles "
        f"(it can execute arbitrary code).\n" + CONVERT_HINT.format(path=directory))
  raise FileNotFoundError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}")


class SafetensorsReader:
  """Lazy, read-only view of a model directory's tensors (numpy), single file or sharded.

  Tensors are read one at a time on access, so converting a large model never holds two copies
  of every weight. `unused()` lists names never read (for strict conversion).
  """

  def __init__(self, directory: str):
    refuse_pickles(directory)
    self.directory = directory
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(os.path.join(directory, SINGLE_FILE)):
      with safe_open(os.path.join(directory, SINGLE_FILE), framework="np") as f:
        self._file_of = {k: SINGLE_FILE for k in f.keys()}
    else:
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise HFConversionError(f"{index_path}: no 'weight_map' object")
      for shard in set(weight_map.values()):
        if not shard.endswith(".safetensors") or os.path.basename(shard) != shard:
          raise HFConversionError(f"{index_path}: shard {shard!r} is not a local .safetensors")
      self._file_of = dict(weight_map)
    self._read: set[str] = set()

  def keys(self) -> list[str]:
    return sorted(self._file_of)

  def __contains__(self, name: str) -> bool:
    return name in self._file_of

  def get(self, name: str) -> np.ndarray:
    if name not in self._file_of:
      raise HFConversionError(f"{self.directory}: missing tensor {name!r}")
    with safe_open(os.path.join(self.directory, self._file_of[name]), framework="np") as f:
      out = f.get_tensor(name)
    self._read.add(name)
    return out

  def unused(self) -> list[str]:
    return sorted(set(self._file_of) - self._read)


def write_safetensors(directory: str, tensors: Mapping[str, np.ndarray],
                      max_shard_bytes: Optional[int] = None,
                      metadata: Optional[Mapping[str, str]] = None) -> list[str]:
  """Writes `model.safetensors`, or shards + index when larger than `max_shard_bytes`.

  Returns the written file names. `metadata` {"format": "pt"} is what transformers expects.
  """
  meta = {"format": "pt", **(metadata or {})}
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  total = sum(v.nbytes for v in tensors.values())
  for stale in (SINGLE_FILE, INDEX_FILE):
    if os.path.exists(os.path.join(directory, stale)):
      os.remove(os.path.join(directory, stale))
  if max_shard_bytes is None or total <= max_shard_bytes:
    save_file(tensors, os.path.join(directory, SINGLE_FILE), metadata=meta)
    return [SINGLE_FILE]
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, value in tensors.items():
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = value
    size += value.nbytes
  names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map = {}
  for name, shard in zip(names, shards):
    save_file(shard, os.path.join(directory, name), metadata=meta)
    weight_map.update({k: name for k in shard})
  with open(os.path.join(directory, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
              sort_keys=True)
  return names + [INDEX_FILE]



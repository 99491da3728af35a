"""Self-describing model directories: weights (orbax) + model_config.json + tokenizer/.

Every stage ends by writing one (`<workdir>/model`), the next stage starts from it, and
`instructjax.load(dir)` reads it back. Layout:
  model_config.json   ModelConfig fields plus "head" ("lm" or "scalar") and extra metadata
  tokenizer/          whatever tokenizer.save() wrote
  params/             orbax StandardCheckpointer of the parameter pytree
Weights are read by orbax only (never pickle).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from instructjax.models.config import ModelConfig
from instructjax.tokenizer import Tokenizer, load_tokenizer

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
_META_KEYS = ("head", "meta")


def is_model_dir(path: str) -> bool:
  return (os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE))
          and os.path.isdir(os.path.join(path, PARAMS_DIR)))


def save_model(directory: str, params: Any, model_config: ModelConfig, tokenizer: Tokenizer,
               head: str = "lm", meta: Optional[dict] = None) -> str:
  """Writes params, config and tokenizer; overwrites an existing model in `directory`."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, PARAMS_DIR), params, force=True)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    tokenizer.save(os.path.join(directory, TOKENIZER_DIR))
    record = {**model_config.to_dict(), "head": head, "meta": meta or {}}
    tmp = os.path.join(directory, MODEL_CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(directory, MODEL_CONFIG_FILE))
  return directory


def read_model_dir_config(directory: str) -> tuple[ModelConfig, str, dict]:
  """(ModelConfig, head, meta) of a model directory."""
  path = os.path.join(directory, MODEL_CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{directory} is not an instructjax model directory: no "
                            f"{MODEL_CONFIG_FILE}")
  with open(path) as f:
    record = json.load(f)
  head = record.pop("head", "lm")
  meta = record.pop("meta", {})
  return ModelConfig.from_dict(record, where=path).validate(), head, meta


def load_model(directory: str, shardings: Any = None, abstract_params: Any = None
               ) -> tuple[Any, ModelConfig, Tokenizer, str, dict]:
  """(params, ModelConfig, tokenizer, head, meta). With `shardings` (a pytree of Shardings
  matching the params) the weights are restored straight into that layout."""
  directory = os.path.abspath(directory)
  cfg, head, meta = read_model_dir_config(directory)
  params_path = os.path.join(directory, PARAMS_DIR)
  with ocp.StandardCheckpointer() as ckptr:
    if abstract_params is None:
      meta_tree = ckptr.metadata(params_path)
      tree = getattr(meta_tree, "item_metadata", meta_tree)
      tree = getattr(tree, "tree", tree)
      abstract_params = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
    if shardings is None:
      # Without target shardings, onto this process's first device: the saved layout may name
      # devices of other hosts or of another topology.
      local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: local, abstract_params)
    abstract_params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params,
        shardings)
    params = ckptr.restore(params_path, abstract_params)
  return params, cfg, load_tokenizer(os.path.join(directory, TOKENIZER_DIR)), head, meta


def load_any_model(path: str, key: str = "init_from"
                   ) -> tuple[Any, ModelConfig, Tokenizer, str, dict]:
  """A stage's starting model: an instructjax model directory or a local Hugging Face one
  (config.json + safetensors; float32 weights, computing in the dtype it is stored in). Errors
  name the config key that pointed here."""
  from instructjax.config import ConfigError  # Local: avoids a cycle at import.
  if not os.path.isdir(path):
    raise ConfigError(f"config.{key}: {path} is not a directory")
  if is_model_dir(path):
    return load_model(path)
  from instructjax.hf.config import stored_dtype  # Optional dependency.
  from instructjax.hf.convert import import_hf, is_hf_dir, read_hf_config
  if not is_hf_dir(path):
    raise ConfigError(f"config.{key}: {path} is neither an instructjax model directory "
                      f"({MODEL_CONFIG_FILE} + {PARAMS_DIR}/) nor a Hugging Face one (config.json)")
  imported = import_hf(path, dtype=stored_dtype(read_hf_config(path)))
  if imported.tokenizer is None:
    raise ConfigError(f"config.{key}: {path} has no tokenizer files; save the tokenizer with "
                      "the model (tokenizer.save_pretrained)")
  return imported.params, imported.config, imported.tokenizer, imported.head, {"source": path}

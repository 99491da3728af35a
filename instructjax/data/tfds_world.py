"""InstructWorld as a local TFDS dataset `instruct_world`, written as array_record (no download).

tensorflow-datasets (>= 4.9.6) builds and reads array_record datasets without TensorFlow: the
builder here is run by `prepare_world_tfds`, and the data is read with `tfds.data_source`
(random access, grain-compatible) or `instructjax.data.load_tfds("instruct_world/sft", ...)`.

Builder configs and their TFDS splits (records as in the world's JSONL export):
  sft          train            {"prompt", "response"}
  comparisons  train            {"prompt", "responses", "ranking", "group", "finished"}
  prompts      ppo, rm, heldout {"prompt"}
  pretrain     train, heldout   {"text"} (documents without EOS)
`comparisons` needs the static comparison source (the policy source is built by a later stage).
Records keep the world's order (shuffling disabled), so index i is the world split's record i.
The WorldConfig is stored in the dataset's metadata; preparing a different WorldConfig into a
data_dir that already holds another one raises, instead of silently reusing stale data.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from instructjax.world.splits import WorldConfig, build_split

try:
  import numpy as np
  import tensorflow_datasets as tfds
except ImportError as e:  # Optional dependency: the instructjax[tfds] extra.
  tfds = None
  _IMPORT_ERROR = e

NAME = "instruct_world"
VERSION = "1.0.0"
# Config -> TFDS split -> world split.
CONFIG_SPLITS: dict[str, dict[str, str]] = {
    "sft": {"train": "sft"},
    "comparisons": {"train": "comparisons"},
    "prompts": {"ppo": "ppo", "rm": "rm_prompts", "heldout": "heldout"},
    "pretrain": {"train": "pretrain", "heldout": "pretrain_heldout"},
}


def _require_tfds() -> None:
  if tfds is None:
    raise ImportError(
        "the InstructWorld TFDS builder needs tensorflow-datasets (TensorFlow is not needed for "
        "array_record): `pip install tensorflow-datasets array-record` or the instructjax[tfds] "
        f"extra ({_IMPORT_ERROR})")


def _world_metadata(world: WorldConfig) -> dict:
  return {k: v for k, v in dataclasses.asdict(world).items()}


if tfds is not None:

  def _features(config_name: str):
    text = tfds.features.Text()
    if config_name == "sft":
      return tfds.features.FeaturesDict({"prompt": text, "response": text})
    if config_name == "comparisons":
      return tfds.features.FeaturesDict({
          "prompt": text,
          "responses": tfds.features.Sequence(tfds.features.Text()),
          "ranking": tfds.features.Sequence(np.int32),
          "group": tfds.features.Text(),
          "finished": tfds.features.Sequence(np.bool_),
      })
    if config_name == "prompts":
      return tfds.features.FeaturesDict({"prompt": text})
    return tfds.features.FeaturesDict({"text": text})

  def _example(config_name: str, record) -> dict:
    if config_name == "sft":
      return record.to_json()
    if config_name == "comparisons":
      return {"prompt": record.prompt, "responses": list(record.responses),
              "ranking": list(record.ranking), "group": record.group,
              "finished": list(record.finished_flags)}
    if config_name == "prompts":
      return {"prompt": record}
    return {"text": record}

  class InstructWorld(tfds.core.GeneratorBasedBuilder):
    """InstructWorld's splits, generated locally from a WorldConfig."""

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in CONFIG_SPLITS]

    def __init__(self, *, world: WorldConfig = WorldConfig(), **kwargs):
      self.world = world
      kwargs.setdefault("file_format", "array_record")
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description="InstructWorld: the instructjax recipe's miniature InstructGPT setting.",
          features=_features(self.builder_config.name),
          metadata=tfds.core.MetadataDict(world_config=_world_metadata(self.world)),
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download.
      return {tfds_split: self._generate_examples(world_split)
              for tfds_split, world_split in CONFIG_SPLITS[self.builder_config.name].items()}

    def _generate_examples(self, world_split: str):
      records = build_split(self.world, world_split)
      if world_split == "comparisons" and not records:
        raise ValueError("the comparisons config needs WorldConfig(comparison_source='static')")
      for i, record in enumerate(records):
        yield i, _example(self.builder_config.name, record)


def prepare_world_tfds(world: WorldConfig, data_dir: str,
                       configs: Optional[Sequence[str]] = None) -> dict[str, str]:
  """Writes the given configs (default: all that apply) as array_record; returns config -> dir."""
  _require_tfds()
  if configs is None:
    configs = [c for c in CONFIG_SPLITS
               if c != "comparisons" or world.comparison_source == "static"]
  out = {}
  for config_name in configs:
    if config_name not in CONFIG_SPLITS:
      raise ValueError(f"unknown config {config_name!r}; expected one of {tuple(CONFIG_SPLITS)}")
    builder = InstructWorld(world=world, config=config_name, data_dir=os.fspath(data_dir))
    builder.download_and_prepare()
    stored = dict(builder.info.metadata.get("world_config", {}))
    if stored != _world_metadata(world):
      raise ValueError(
          f"{builder.data_dir} already holds InstructWorld {stored}, not {_world_metadata(world)}; "
          "prepare into another data_dir")
    out[config_name] = builder.data_dir
  return out


def world_data_source(config_name: str, split: str, data_dir: str):
  """Random-access source (no TensorFlow) over a prepared config's split, e.g. for grain."""
  _require_tfds()
  return tfds.data_source(f"{NAME}/{config_name}", split=split, data_dir=os.fspath(data_dir),
                          download=False)

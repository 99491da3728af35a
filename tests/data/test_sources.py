"""TFDS and HF `datasets` sources: guarded imports with clear errors; TFDS read without TF."""
import sys

import pytest

from instructjax.data import load_hf_local, load_tfds, make_comparison_iterator


def test_tfds_absent_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # Makes the import fail.
  with pytest.raises(ImportError, match="needs tensorflow-datasets.*pip install"):
    load_tfds("anything", data_dir="/nowhere")


def test_hf_datasets_absent_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "datasets", None)
  with pytest.raises(ImportError, match="needs the HF datasets library.*pip install datasets"):
    load_hf_local(tmp_path / "x.jsonl")


def _make_tfds_builder():
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")

  class InstructjaxTestComparisons(tfds.core.GeneratorBasedBuilder):
    # A one-part module name keeps tfds from resolving the builder's code path through the
    # test package, which needs the importlib_resources backport.
    __module__ = "instructjax_tfds_test"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      text = tfds.features.Text()
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"prompt": text, "chosen": text, "rejected": text}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):
        yield i, {"prompt": f"question {i}", "chosen": "good", "rejected": "bad"}

  return InstructjaxTestComparisons


def test_tfds_by_name_and_data_dir(tmp_path):
  builder_cls = _make_tfds_builder()
  builder_cls(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  records = load_tfds("instructjax_test_comparisons", split="train", data_dir=tmp_path)
  assert records.name == "tfds:instructjax_test_comparisons/train"
  assert sorted(r["prompt"] for r in records) == [f"question {i}" for i in range(6)]
  assert all(isinstance(r["chosen"], str) for r in records)  # bytes decoded.
  from instructjax.tokenizer import CharTokenizer
  it = make_comparison_iterator(records, CharTokenizer(), batch_size=3, seq_len=24, seed=0,
                                shard_index=0, shard_count=1)
  assert next(it)["tokens"].shape == (3, 2, 24)
  with pytest.raises(Exception, match="tfds:no_such_dataset/train"):
    load_tfds("no_such_dataset", split="train", data_dir=tmp_path)


class _FakeDatasets:
  """Stands in for the HF `datasets` module (not installed here) to test the glue around it."""

  class DatasetDict(dict):
    pass

  def __init__(self):
    self.calls = []

  def load_dataset(self, builder, data_files, split):
    self.calls.append((builder, data_files, split))
    return [{"prompt": "p", "response": "r"}]

  def load_from_disk(self, path):
    self.calls.append(("disk", path))
    return self.DatasetDict(train=[{"text": "t"}])


def test_hf_local_files_and_saved_datasets(monkeypatch, tmp_path):
  fake = _FakeDatasets()
  monkeypatch.setitem(sys.modules, "datasets", fake)
  path = tmp_path / "sft.jsonl"
  path.write_text("{}\n")
  records = load_hf_local(path)
  assert records == [{"prompt": "p", "response": "r"}] and records.name == f"hf:{path}"
  assert fake.calls[-1] == ("json", {"train": str(path)}, "train")
  saved = tmp_path / "saved"
  saved.mkdir()
  assert load_hf_local(saved) == [{"text": "t"}]
  with pytest.raises(FileNotFoundError, match="no such local path"):
    load_hf_local(tmp_path / "missing.jsonl")
  (tmp_path / "x.txt").write_text("")
  with pytest.raises(ValueError, match="cannot tell the format"):
    load_hf_local(tmp_path / "x.txt")

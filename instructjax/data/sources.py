"""Where raw records come from: JSONL files, in-memory sequences, TFDS, local HF `datasets`.

Every source yields `(where, raw)` pairs, `where` naming the record for error messages:
"path/to/file.jsonl:17" (1-based line) for files and "name[17]" (0-based index) for sequences.
`raw` is a JSONL line (parsed by `to_mapping`) or an in-memory mapping. Blank JSONL lines are
not records and are passed over (trailing newlines are common); every other line is a record.

TFDS and HF `datasets` are optional: their loaders import lazily and raise an ImportError that
says which pip package to install. Both return a `RecordList` (a list of plain python dicts,
bytes decoded as UTF-8) that remembers its name for error messages.
"""
from __future__ import annotations

import gzip
import json
import os
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np

from instructjax.data.errors import DataError

PathLike = Union[str, os.PathLike]


class RecordList(list):
  """A list of records with a `name` used in error locations ("name[i]")."""

  def __init__(self, name: str, records=()):
    super().__init__(records)
    self.name = name


Source = Union[PathLike, Sequence[PathLike], Sequence[Mapping[str, Any]]]


def _is_path(x: Any) -> bool:
  return isinstance(x, (str, os.PathLike))


def source_name(source: Source) -> str:
  """A short name for reports: the path(s), or a RecordList's name, or "records"."""
  if _is_path(source):
    return os.fspath(source)
  if isinstance(source, RecordList):
    return source.name
  if isinstance(source, Sequence) and source and all(_is_path(s) for s in source):
    return ",".join(os.fspath(s) for s in source)
  return "records"


class Undecodable(str):
  """A JSONL line that is not UTF-8; `to_mapping` reports it as a bad record (so it is skipped
  or raised like any other, by `on_error`)."""


def _open_jsonl(path: str):
  """The file opened for reading in binary, or a DataError naming the path and what is wrong
  (missing, a directory, a .gz that is not gzip)."""
  if not os.path.exists(path):
    raise DataError(path, "missing_file", "no such file")
  if os.path.isdir(path):
    raise DataError(path, "not_a_file", "is a directory, not a JSONL file")
  if path.endswith(".gz"):
    with open(path, "rb") as f:
      magic = f.read(2)
    if magic and magic != b"\x1f\x8b":
      raise DataError(path, "bad_gzip", "is named .gz but is not gzip-compressed (rename it "
                      "without .gz, or compress it with gzip)")
    return gzip.open(path, "rb")
  return open(path, "rb")


def iter_jsonl_lines(path: PathLike) -> Iterator[tuple[str, str]]:
  """Yields ("path:line", text) for each non-blank line of a JSONL (optionally .gz) file; a
  line that is not UTF-8 comes as an `Undecodable` naming the byte."""
  path = os.fspath(path)
  try:
    with _open_jsonl(path) as f:
      for line_no, raw in enumerate(f, start=1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          yield f"{path}:{line_no}", Undecodable(
              f"byte {e.start} ({raw[e.start:e.start + 1]!r}) is not UTF-8; JSONL files must "
              "be UTF-8")
          continue
        if line.strip():
          yield f"{path}:{line_no}", line
  except (OSError, EOFError) as e:  # A truncated gzip stream, a read error.
    raise DataError(path, "unreadable", f"cannot be read: {e}") from None


def iter_raw(source: Source, name: str | None = None) -> Iterator[tuple[str, Any]]:
  """Yields (where, raw) for a path, a list of paths, or a sequence of mappings."""
  if _is_path(source):
    yield from iter_jsonl_lines(source)
    return
  if isinstance(source, (Mapping, bytes)):
    raise TypeError(f"a data source must be a path or a sequence of records, got {type(source)}")
  if not isinstance(source, Sequence):
    source = list(source)  # E.g. a generator of records.
  if source and all(_is_path(s) for s in source):
    for path in source:
      yield from iter_jsonl_lines(path)
    return
  name = name or source_name(source)
  for i, rec in enumerate(source):
    yield f"{name}[{i}]", rec


def to_mapping(where: str, raw: Any) -> Mapping[str, Any]:
  """Parses a JSONL line (or passes a mapping through); DataError if it is not a JSON object."""
  if isinstance(raw, Undecodable):
    raise DataError(where, "not_utf8", str(raw))
  if isinstance(raw, str):
    try:
      raw = json.loads(raw)
    except json.JSONDecodeError as e:
      raise DataError(where, "malformed_json", f"malformed JSON: {e.msg} at column {e.colno}")
  if not isinstance(raw, Mapping):
    raise DataError(where, "not_an_object",
                    f"expected a JSON object, got {type(raw).__name__}")
  return raw


def to_python(x: Any) -> Any:
  """Converts TFDS/numpy values to plain python: bytes -> str, arrays -> lists, scalars."""
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, Mapping):
    return {k: to_python(v) for k, v in x.items()}
  if isinstance(x, np.ndarray):
    return [to_python(v) for v in x.tolist()] if x.ndim else to_python(x.item())
  if isinstance(x, np.generic):
    return to_python(x.item())
  if isinstance(x, (list, tuple)):
    return [to_python(v) for v in x]
  return x


def load_tfds(name: str, *, split: str = "train", data_dir: PathLike | None = None) -> RecordList:
  """Loads an already prepared TFDS dataset into memory as python dicts.

  Uses `tfds.data_source` (random access, no TensorFlow, needs the array_record file format);
  falls back to `tfds.load` + `tfds.as_numpy` when the dataset was written as TFRecords and
  TensorFlow is installed. Never downloads.

  Args:
    name: TFDS name, e.g. "instruct_world/sft" or "my_dataset:1.0.0".
    split: TFDS split expression.
    data_dir: the TFDS data directory (default: TFDS's own default).

  Returns:
    A RecordList named "tfds:<name>/<split>".
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"load_tfds({name!r}) needs tensorflow-datasets; install it with "
        "`pip install tensorflow-datasets array-record` (or the instructjax[tfds] extra)") from e
  data_dir = os.fspath(data_dir) if data_dir is not None else None
  label = f"tfds:{name}/{split}"
  try:
    src = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    return RecordList(label, (to_python(src[i]) for i in range(len(src))))
  except Exception as data_source_error:  # pylint: disable=broad-except
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
    except ImportError:
      raise RuntimeError(
          f"{label}: could not open with tfds.data_source ({data_source_error}); datasets "
          "stored as TFRecords also need `pip install tensorflow`") from data_source_error
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    return RecordList(label, (to_python(ex) for ex in tfds.as_numpy(ds)))


def load_hf_local(path: PathLike, *, split: str = "train") -> RecordList:
  """Loads a local HF `datasets` dataset (save_to_disk directory, or json/jsonl/parquet/csv).

  Never touches the network: only local paths are accepted.
  """
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"load_hf_local({os.fspath(path)!r}) needs the HF datasets library; install it with "
        "`pip install datasets` (or the instructjax[datasets] extra)") from e
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"load_hf_local: no such local path {path!r}")
  label = f"hf:{path}"
  if os.path.isdir(path):
    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
      ds = ds[split]
  else:
    ext = path.split(".")[-1] if not path.endswith(".gz") else path.split(".")[-2]
    builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(ext)
    if builder is None:
      raise ValueError(f"load_hf_local: cannot tell the format of {path!r} from its extension")
    ds = datasets.load_dataset(builder, data_files={split: path}, split=split)
  return RecordList(label, (dict(r) for r in ds))

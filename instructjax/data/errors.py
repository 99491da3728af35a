"""Data errors that name their source, and the report of what was skipped or truncated.

Every bad record raises `DataError("path/file.jsonl:17", "bad_ranking", "ranking [0, 0, 2] is
not a permutation of 0..2")`, printed as `path/file.jsonl:17: ranking [0, 0, 2] is not a
permutation of 0..2`. With `on_error="skip"` the loaders catch it instead and count it in a
`DataReport` by its `reason`, so that nothing is ever dropped silently: the caller logs
`report.summary()` when loading ends.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable, Literal, TypeVar

OnError = Literal["raise", "skip"]
_T = TypeVar("_T")

# Reasons used across the package (the `reason` of a DataError), so counts can be grepped.
REASONS = (
    "missing_file",  # A data path that does not exist.
    "not_a_file",  # A data path that is a directory.
    "bad_gzip",  # A .gz file that is not gzip.
    "unreadable",  # A file that cannot be read to its end (truncated gzip, I/O error).
    "not_utf8",  # A JSONL line that is not UTF-8.
    "malformed_json",  # A JSONL line is not valid JSON.
    "not_an_object",  # A JSONL line is valid JSON but not an object.
    "missing_field",  # A required field is absent.
    "bad_type",  # A field has the wrong type.
    "empty_prompt",
    "empty_response",
    "empty_text",
    "too_few_responses",  # A comparison with K < 2.
    "too_many_responses",  # K larger than the batch's K_max.
    "bad_ranking",  # Ranking is not a permutation of 0..K-1.
    "bad_dialogue",  # A chat or Anthropic-HH dialogue that cannot be split.
    "encode_error",  # The tokenizer rejected the text.
    "too_long",  # Longer than the model allows and truncation is disabled.
    "no_records",  # Nothing valid left in a source.
)


class DataError(ValueError):
  """A bad record. `where` is "file:line" (1-based) or "name[index]"; `reason` a short key."""

  def __init__(self, where: str, reason: str, message: str):
    super().__init__(f"{where}: {message}")
    self.where = where
    self.reason = reason
    self.message = message


@dataclasses.dataclass
class DataReport:
  """What a load/encode pass did: records read, kept, skipped by reason, truncated.

  Attributes:
    source: name of the data source (a path or "records").
    num_read: records seen (including skipped ones).
    num_kept: records that made it into the dataset.
    skipped: reason -> count of records dropped under on_error="skip".
    skip_examples: reason -> the first few error messages, for the summary.
    truncated_prompts: prompts cut from the left to fit max_prompt_len / seq_len.
    truncated_responses: responses cut from the right to fit seq_len.
    split_documents: pretraining documents longer than seq_len split into pieces.
  """
  source: str = ""
  num_read: int = 0
  num_kept: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skip_examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  truncated_prompts: int = 0
  truncated_responses: int = 0
  split_documents: int = 0

  MAX_EXAMPLES = 3

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())

  def record_skip(self, error: DataError) -> None:
    self.skipped[error.reason] += 1
    examples = self.skip_examples.setdefault(error.reason, [])
    if len(examples) < self.MAX_EXAMPLES:
      examples.append(str(error))

  def merge(self, other: DataReport) -> DataReport:
    """Adds `other`'s counts into this report (e.g. the encode pass after the parse pass)."""
    self.num_read = max(self.num_read, other.num_read)
    self.skipped.update(other.skipped)
    for reason, msgs in other.skip_examples.items():
      mine = self.skip_examples.setdefault(reason, [])
      mine.extend(msgs[:self.MAX_EXAMPLES - len(mine)])
    self.truncated_prompts += other.truncated_prompts
    self.truncated_responses += other.truncated_responses
    self.split_documents += other.split_documents
    return self

  def summary(self) -> str:
    """One human-readable paragraph; the training loop logs it."""
    lines = [f"{self.source or 'data'}: read {self.num_read}, kept {self.num_kept}, "
             f"skipped {self.num_skipped}; truncated prompts {self.truncated_prompts}, "
             f"truncated responses {self.truncated_responses}, "
             f"split documents {self.split_documents}"]
    for reason, count in sorted(self.skipped.items()):
      lines.append(f"  skipped {count} x {reason}, e.g. {self.skip_examples.get(reason, [])[:1]}")
    return "\n".join(lines)

  def nothing_left(self, what: str) -> "DataError":
    """The error for a source that yielded no usable record."""
    if self.num_read == 0:
      return DataError(self.source or "data", "no_records", "has no records")
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
    return DataError(self.source or "data", "no_records",
                     f"no valid {what} left of {self.num_read} records (skipped: {reasons})")

  def to_dict(self) -> dict:
    return {"source": self.source, "num_read": self.num_read, "num_kept": self.num_kept,
            "skipped": dict(self.skipped), "truncated_prompts": self.truncated_prompts,
            "truncated_responses": self.truncated_responses,
            "split_documents": self.split_documents}


def check_on_error(on_error: str) -> None:
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def guarded(fn: Callable[[], _T], report: DataReport, on_error: OnError) -> _T | None:
  """Runs `fn`; a DataError is re-raised, or counted in `report` and None returned."""
  try:
    return fn()
  except DataError as e:
    if on_error == "raise":
      raise
    report.record_skip(e)
    return None


def log_report(report: DataReport, logger: logging.Logger | None = None) -> None:
  """Logs the summary: a warning when anything was skipped, info otherwise."""
  logger = logger or logging.getLogger("instructjax.data")
  level = logging.WARNING if report.num_skipped else logging.INFO
  logger.log(level, "%s", report.summary())
  cut = max(report.truncated_prompts, report.truncated_responses)
  if report.num_kept and cut > report.num_kept // 2:
    logger.warning("%s: %d of %d records were truncated to fit: the model would mostly see cut "
                   "text. Raise config.data.seq_len (or set config.data.truncate=False to "
                   "refuse records that do not fit).", report.source, cut, report.num_kept)

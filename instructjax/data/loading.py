"""Reads a source into validated records (schemas.py), raising or counting bad ones.

    demos, report = load_records("data/sft.jsonl", "demonstrations", on_error="skip")
    log_report(report)  # "data/sft.jsonl: read 1000, kept 997, skipped 3 ..."

A source is a JSONL path (or list of paths), or a sequence of mappings (e.g. a RecordList from
`load_tfds` / `load_hf_local`), or a sequence of already parsed records of the right kind.
`adapter` ("hh", "tldr", "alpaca" or a callable (record, where) -> dict) maps a public layout to
the canonical one before validation. Validation is eager and on the host: every error surfaces
here, before any batch is built or anything is jitted.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

from instructjax.data import schemas
from instructjax.data.adapters import Adapter, get_adapter
from instructjax.data.errors import DataReport, OnError, check_on_error, guarded
from instructjax.data.sources import Source, iter_raw, source_name, to_mapping

Kind = Literal["demonstrations", "comparisons", "prompts", "texts"]

PARSERS: dict[str, tuple[type, Callable[..., Any]]] = {
    "demonstrations": (schemas.Demonstration, schemas.parse_demonstration),
    "comparisons": (schemas.Comparison, schemas.parse_comparison),
    "prompts": (schemas.PromptRecord, schemas.parse_prompt),
    "texts": (schemas.TextDocument, schemas.parse_text),
}


def load_records(source: Source, kind: Kind, *, adapter: str | Adapter | None = None,
                 on_error: OnError = "raise", name: str | None = None) -> tuple[list, DataReport]:
  """Parses and validates every record of `source` as `kind`.

  Args:
    source: JSONL path(s), a sequence of mappings, or a sequence of parsed records.
    kind: "demonstrations", "comparisons", "prompts" or "texts".
    adapter: optional public-layout adapter name or callable.
    on_error: "raise" (first bad record raises DataError "where: what") or "skip" (bad
      records are counted by reason in the report).
    name: label for in-memory sources in error locations (default "records").

  Returns:
    (records, report): the valid records in source order, and the counts.
  """
  if kind not in PARSERS:
    raise ValueError(f"unknown record kind {kind!r}; known: {sorted(PARSERS)}")
  check_on_error(on_error)
  record_cls, parse = PARSERS[kind]
  adapt = get_adapter(adapter, kind)
  report = DataReport(source=name or source_name(source))
  out = []
  for where, raw in iter_raw(source, name):
    report.num_read += 1
    if isinstance(raw, record_cls):
      out.append(raw)
      continue

    def one(where=where, raw=raw):
      rec = to_mapping(where, raw)
      if adapt is not None:
        rec = adapt(rec, where)
      return parse(rec, where)

    parsed = guarded(one, report, on_error)
    if parsed is not None:
      out.append(parsed)
  report.num_kept = len(out)
  return out, report

"""The data layer: record formats, sources, validation, tokenization, batching, grain iterators.

Formats (JSONL, one object per line; full schemas in SCHEMAS.md and schemas.py):
  demonstrations  {"prompt": str, "response": str} | {"messages": [{"role", "content"}, ...]}
  comparisons     {"prompt": str, "responses": [str, ...], "ranking": [int, ...] (best to
                  worst), "group": str (optional)} | {"prompt", "chosen", "rejected"}
  prompts         {"prompt": str, ...metadata} | {"messages": [{"role", "content"}, ...], ...}
  pretraining     {"text": str}

Entry points:
  make_lm_iterator / make_comparison_iterator / make_prompt_iterator (pipeline.py) -> a
  checkpointable BatchIterator of numpy batch dicts in the model's contract (batching.py).
  load_records (loading.py) validates a source; adapters.py maps Anthropic HH, TL;DR and
  Alpaca layouts; sources.py reads JSONL, TFDS and local HF datasets.
"""
from instructjax.data.adapters import ADAPTERS, alpaca, anthropic_hh, tldr_comparison
from instructjax.data.encode import EncodeConfig
from instructjax.data.errors import DataError, DataReport, log_report
from instructjax.data.loading import load_records
from instructjax.data.iterators import (BatchIterator, make_comparison_iterator,
                                       make_lm_iterator, make_prompt_iterator, state_from_json,
                                       state_to_json)
from instructjax.data.schemas import Comparison, Demonstration, PromptRecord, TextDocument
from instructjax.data.sources import RecordList, load_hf_local, load_tfds

__all__ = [
    "ADAPTERS", "BatchIterator", "Comparison", "DataError", "DataReport", "Demonstration",
    "EncodeConfig", "PromptRecord", "RecordList", "TextDocument", "alpaca", "anthropic_hh",
    "load_hf_local", "load_records", "load_tfds", "log_report", "make_comparison_iterator",
    "make_lm_iterator", "make_prompt_iterator", "state_from_json", "state_to_json",
    "tldr_comparison",
]

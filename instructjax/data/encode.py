"""Tokenization and the truncation policy: validated records -> token id sequences.

Sequences (BOS only when `add_bos`; default False, as for InstructWorld's char tokenizer):
  SFT example:     [BOS] + prompt + response + EOS
  pretraining doc: [BOS] + text + EOS
  comparison:      [BOS] + prompt + response_k + EOS, for each of the K responses
  PPO prompt:      [BOS] + prompt
Prompt and response are tokenized separately, so the boundary between them is exact. Chat
prompts (demonstrations' and prompts' "messages") go through the tokenizer's chat template when
it has one; a template that starts with BOS itself gets no second one.

Truncation policy (`truncate=True`):
  * prompts are cut from the LEFT to `max_prompt_len` tokens (the end of a prompt, next to the
    response, matters most); BOS, when used, is kept in front;
  * responses are cut from the RIGHT so the sequence fits `seq_len`. An SFT response that was
    cut gets no EOS (the model must not learn to stop at an arbitrary cut); a comparison
    response keeps its EOS, because the reward is read at the EOS;
  * a pretraining document longer than `seq_len` is split into consecutive pieces of `seq_len`
    tokens, each its own document in the batch (no token is dropped).
  `max_prompt_len` defaults to seq_len - len(BOS) - 2 (room for one response token and EOS).
With `truncate=False` any sequence that does not fit is a DataError with reason "too_long".
Counts of truncated prompts and responses (and split documents) go to the DataReport.

Encoded examples are small dicts of numpy arrays and ints, the elements of the grain pipelines:
  LM:         {"ids": int32[L], "loss_start": int}  loss counts targets at t in
              [loss_start, L - 2], i.e. predicting ids[loss_start + 1:]
  comparison: {"seqs": [int32[L_k] for k, best to worst], "prompt_len": int (the tokens every
              seq starts with), "group": int, "example_id": int}
  prompt:     {"ids": int32[L], "example_id": int}
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np

from instructjax.data.batching import packed_length
from instructjax.data.errors import DataError, DataReport, OnError, guarded
from instructjax.data.schemas import Comparison, Demonstration, PromptRecord, TextDocument

ChatRecord = Demonstration | PromptRecord  # Records whose prompt may be chat messages.


@dataclasses.dataclass(frozen=True)
class EncodeConfig:
  """Lengths and truncation policy.

  Attributes:
    seq_len: T, the longest sequence (for PPO prompts: unused, see max_prompt_len).
    max_prompt_len: most prompt tokens incl. BOS; None -> seq_len - len(BOS) - 2.
    add_bos: prepend the tokenizer's BOS to every sequence.
    truncate: apply the truncation policy; False -> too-long records are DataErrors.
  """
  seq_len: int
  max_prompt_len: int | None = None
  add_bos: bool = False
  truncate: bool = True

  def __post_init__(self):
    if self.seq_len < 2 + self.add_bos:
      raise ValueError(f"seq_len {self.seq_len} is too short for a sequence")
    limit = self.seq_len - 2
    if self.max_prompt_len is not None and not 1 + self.add_bos <= self.max_prompt_len <= limit:
      raise ValueError(
          f"max_prompt_len {self.max_prompt_len} must be in [{1 + self.add_bos}, {limit}] "
          f"(seq_len {self.seq_len} leaves room for >= 1 response token and EOS)")

  @property
  def prompt_limit(self) -> int:
    """Most prompt tokens including BOS."""
    return self.max_prompt_len if self.max_prompt_len is not None else self.seq_len - 2


def _encode_text(tokenizer, text: str, where: str, what: str) -> list[int]:
  try:
    return list(tokenizer.encode(text))
  except Exception as e:  # pylint: disable=broad-except  # Tokenizers raise all sorts.
    raise DataError(where, "encode_error", f"cannot tokenize the {what}: {e}") from e


def _chat_prompt_ids(tokenizer, rec: ChatRecord) -> list[int]:
  """Prompt turns through the tokenizer's chat template (if any), else the plain rendering."""
  if (rec.messages is None or not hasattr(tokenizer, "apply_chat_template")
      or not getattr(tokenizer, "has_chat_template", True)):
    return _encode_text(tokenizer, rec.prompt, rec.where, "prompt")
  try:
    out = tokenizer.apply_chat_template([dict(m) for m in rec.messages],
                                        add_generation_prompt=True)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(rec.where, "encode_error", f"chat template failed: {e}") from e
  if isinstance(out, Mapping):  # Some HF versions return a BatchEncoding.
    out = out["input_ids"]
  if isinstance(out, str):
    return _encode_text(tokenizer, out, rec.where, "chat prompt")
  return [int(t) for t in out]


def _bos_and_prompt(tokenizer, rec: ChatRecord, cfg: EncodeConfig) -> tuple[list[int], list[int]]:
  """(BOS or nothing, the prompt's ids): a chat template that already starts with BOS keeps
  it as the BOS, so the sequence has one, in front of whatever truncation keeps."""
  ids = _chat_prompt_ids(tokenizer, rec)
  if not cfg.add_bos:
    return [], ids
  if rec.messages is not None and ids[:1] == [tokenizer.bos_id]:
    return ids[:1], ids[1:]
  return [tokenizer.bos_id], ids


def _fit_prompt(ids: list[int], bos: list[int], cfg: EncodeConfig, where: str,
                report: DataReport) -> list[int]:
  limit = cfg.prompt_limit - len(bos)
  if len(ids) > limit:
    if not cfg.truncate:
      raise DataError(where, "too_long", f"prompt is {len(ids) + len(bos)} tokens, more than "
                      f"max_prompt_len {cfg.prompt_limit} (truncation disabled)")
    ids = ids[len(ids) - limit:]  # Cut from the left: keep the prompt's end.
    report.truncated_prompts += 1
  return bos + ids


def _fit_response(prompt: list[int], response: list[int], eos: int, cfg: EncodeConfig,
                  where: str, report: DataReport, keep_eos: bool) -> list[int]:
  room = cfg.seq_len - len(prompt)  # >= 2 by the prompt limit.
  if len(response) + 1 <= room:
    return prompt + response + [eos]
  if not cfg.truncate:
    raise DataError(where, "too_long", f"prompt + response + EOS is "
                    f"{len(prompt) + len(response) + 1} tokens, more than seq_len "
                    f"{cfg.seq_len} (truncation disabled)")
  report.truncated_responses += 1
  if keep_eos:
    return prompt + response[:room - 1] + [eos]
  return prompt + response[:room]


def encode_demonstration(demo: Demonstration, tokenizer, cfg: EncodeConfig,
                         report: DataReport) -> dict[str, Any]:
  bos, ids = _bos_and_prompt(tokenizer, demo, cfg)
  prompt = _fit_prompt(ids, bos, cfg, demo.where, report)
  response = _encode_text(tokenizer, demo.response, demo.where, "response")
  ids = _fit_response(prompt, response, tokenizer.eos_id, cfg, demo.where, report,
                      keep_eos=False)
  # Targets from loss_start on are the response tokens (and EOS).
  return {"ids": np.asarray(ids, np.int32), "loss_start": len(prompt) - 1}


def encode_document(doc: TextDocument, tokenizer, cfg: EncodeConfig,
                    report: DataReport) -> list[dict[str, Any]]:
  bos = [tokenizer.bos_id] if cfg.add_bos else []
  ids = bos + _encode_text(tokenizer, doc.text, doc.where, "text") + [tokenizer.eos_id]
  if len(ids) > cfg.seq_len:
    if not cfg.truncate:
      raise DataError(doc.where, "too_long", f"text + EOS is {len(ids)} tokens, more than "
                      f"seq_len {cfg.seq_len} (truncation disabled)")
    report.split_documents += 1
  ids = np.asarray(ids, np.int32)
  return [{"ids": ids[i:i + cfg.seq_len], "loss_start": 0}
          for i in range(0, len(ids), cfg.seq_len)]


def encode_comparison(cmp: Comparison, tokenizer, cfg: EncodeConfig, report: DataReport, *,
                      k_max: int, group_id: int, example_id: int,
                      packed_len: int | None = None) -> dict[str, Any]:
  """Tokenizes one comparison; with `packed_len`, the prompt written once plus every response
  (the packed row) must fit it, else DataError "too_long"."""
  if len(cmp.responses) > k_max:
    raise DataError(cmp.where, "too_many_responses",
                    f"K = {len(cmp.responses)} responses, more than max_responses {k_max}")
  bos = [tokenizer.bos_id] if cfg.add_bos else []
  # Truncation is decided on a scratch report, so nothing is counted for a record that fails.
  scratch = DataReport()
  prompt = _encode_text(tokenizer, cmp.prompt, cmp.where, "prompt")
  prompt = _fit_prompt(prompt, bos, cfg, cmp.where, scratch)
  seqs = []
  for k, response in enumerate(cmp.ranked_responses):
    ids = _encode_text(tokenizer, response, cmp.where, f"response ranked {k}")
    seqs.append(np.asarray(_fit_response(prompt, ids, tokenizer.eos_id, cfg, cmp.where,
                                         scratch, keep_eos=True), np.int32))
  packed = packed_length(seqs, len(prompt))
  if packed_len and packed > packed_len:
    raise DataError(cmp.where, "too_long", f"prompt + {len(seqs)} responses packed is {packed} "
                    f"tokens, more than packed_len {packed_len}")
  report.merge(scratch)
  return {"seqs": seqs, "prompt_len": len(prompt), "group": group_id, "example_id": example_id}


def encode_prompt(rec: PromptRecord, tokenizer, cfg: EncodeConfig, report: DataReport, *,
                  example_id: int) -> dict[str, Any]:
  bos, ids = _bos_and_prompt(tokenizer, rec, cfg)
  ids = _fit_prompt(ids, bos, cfg, rec.where, report)
  return {"ids": np.asarray(ids, np.int32), "example_id": example_id}


def encode_lm_records(records: Sequence[Demonstration | TextDocument], tokenizer,
                      cfg: EncodeConfig, report: DataReport, *, mode: str,
                      on_error: OnError) -> list[dict[str, Any]]:
  """Encodes SFT demonstrations (mode "sft") or pretraining documents ("pretrain")."""
  out = []
  for rec in records:
    if mode == "sft":
      # A scratch report so that a record skipped late does not leave truncation counts.
      def one(rec=rec):
        scratch = DataReport()
        ex = encode_demonstration(rec, tokenizer, cfg, scratch)
        return [ex], scratch
    else:
      def one(rec=rec):
        scratch = DataReport()
        return encode_document(rec, tokenizer, cfg, scratch), scratch
    result = guarded(one, report, on_error)
    if result is not None:
      out.extend(result[0])
      report.merge(result[1])
  return out

"""Adapters from public dataset layouts to the canonical record formats of `schemas.py`.

Each adapter maps one raw record (a mapping) to a canonical record dict, raising DataError with
the record's location when the layout does not fit. The canonical dict is then validated by the
schema parser like any other record, so empty responses etc. are caught in one place.

- "hh" (Anthropic HH-RLHF, comparisons): {"chosen": str, "rejected": str}, each a full
  dialogue "\\n\\nHuman: ...\\n\\nAssistant: ...". Both are split at their LAST
  "\\n\\nAssistant:"; the text up to and including it is the prompt, which must be identical for
  the two, and the rest (usually starting with a space) is the response, so that
  prompt + response reproduces each dialogue exactly. -> {"prompt", "chosen", "rejected"}.
- "tldr" (OpenAI summarize_from_feedback comparisons): {"info": {"id", "post" (or "article"),
  "title", "subreddit"}, "summaries": [{"text": str}, {"text": str}], "choice": 0|1}. Prompt
  "SUBREDDIT: r/<subreddit>\\nTITLE: <title>\\nPOST: <post>\\nTL;DR:" (the lines whose field is
  absent are left out; "ARTICLE:" for CNN/DM items), responses the two summary texts verbatim,
  ranking [choice, 1 - choice], group info.id. -> {"prompt", "responses", "ranking", "group"}.
- "alpaca" (demonstrations): {"instruction": str, "input": str (may be ""), "output": str}
  rendered with the original Stanford Alpaca templates. -> {"prompt", "response"}.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from instructjax.data.errors import DataError

Adapter = Callable[[Mapping[str, Any], str], dict]

HH_ASSISTANT = "\n\nAssistant:"

ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def _str(rec: Mapping[str, Any], key: str, where: str, layout: str) -> str:
  if key not in rec:
    raise DataError(where, "missing_field", f"missing field {key!r} (expected the {layout} "
                    f"layout); fields present: {sorted(rec)}")
  value = rec[key]
  if not isinstance(value, str):
    raise DataError(where, "bad_type", f"field {key!r} must be a string, got "
                    f"{type(value).__name__}")
  return value


def split_hh_dialogue(text: str, where: str = "", which: str = "dialogue") -> tuple[str, str]:
  """Splits an HH dialogue into (prompt ending in "\\n\\nAssistant:", final response)."""
  cut = text.rfind(HH_ASSISTANT)
  if cut < 0:
    raise DataError(where, "bad_dialogue", f"{which} has no '\\n\\nAssistant:' turn")
  cut += len(HH_ASSISTANT)
  return text[:cut], text[cut:]


def anthropic_hh(rec: Mapping[str, Any], where: str = "") -> dict:
  chosen = _str(rec, "chosen", where, "Anthropic HH")
  rejected = _str(rec, "rejected", where, "Anthropic HH")
  prompt_c, resp_c = split_hh_dialogue(chosen, where, "chosen dialogue")
  prompt_r, resp_r = split_hh_dialogue(rejected, where, "rejected dialogue")
  if prompt_c != prompt_r:
    raise DataError(where, "bad_dialogue", "chosen and rejected dialogues differ before their "
                    "last '\\n\\nAssistant:' turn, so they share no prompt")
  return {"prompt": prompt_c, "chosen": resp_c, "rejected": resp_r}


def tldr_comparison(rec: Mapping[str, Any], where: str = "") -> dict:
  layout = "summarize_from_feedback comparison"
  info = rec.get("info")
  if not isinstance(info, Mapping):
    raise DataError(where, "missing_field", f"missing object field 'info' (expected the {layout} "
                    f"layout); fields present: {sorted(rec)}")
  if isinstance(info.get("post"), str):
    body = f"POST: {info['post']}"
  elif isinstance(info.get("article"), str):
    body = f"ARTICLE: {info['article']}"
  else:
    raise DataError(where, "missing_field", "missing string field 'info.post' (or "
                    "'info.article')")
  lines = []
  if isinstance(info.get("subreddit"), str):
    lines.append(f"SUBREDDIT: r/{info['subreddit']}")
  if isinstance(info.get("title"), str):
    lines.append(f"TITLE: {info['title']}")
  lines += [body, "TL;DR:"]
  summaries = rec.get("summaries")
  if not isinstance(summaries, list) or len(summaries) != 2:
    raise DataError(where, "missing_field", "field 'summaries' must be a list of 2 "
                    "{'text': str} objects")
  texts = []
  for i, s in enumerate(summaries):
    if not isinstance(s, Mapping) or not isinstance(s.get("text"), str):
      raise DataError(where, "missing_field", f"summaries[{i}] has no string field 'text'")
    texts.append(s["text"])
  choice = rec.get("choice")
  if choice not in (0, 1) or isinstance(choice, bool):
    raise DataError(where, "bad_ranking", f"field 'choice' must be 0 or 1, got {choice!r}")
  out = {"prompt": "\n".join(lines), "responses": texts, "ranking": [choice, 1 - choice]}
  if info.get("id") is not None:
    out["group"] = str(info["id"])
  return out


def alpaca(rec: Mapping[str, Any], where: str = "") -> dict:
  instruction = _str(rec, "instruction", where, "Alpaca")
  output = _str(rec, "output", where, "Alpaca")
  inp = rec.get("input") or ""
  if not isinstance(inp, str):
    raise DataError(where, "bad_type", f"field 'input' must be a string, got "
                    f"{type(inp).__name__}")
  if inp.strip():
    prompt = ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=inp)
  else:
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
  return {"prompt": prompt, "response": output}


# name -> (adapter, the record kind it produces).
ADAPTERS: dict[str, tuple[Adapter, str]] = {
    "hh": (anthropic_hh, "comparisons"),
    "tldr": (tldr_comparison, "comparisons"),
    "alpaca": (alpaca, "demonstrations"),
}


def get_adapter(adapter: str | Adapter | None, kind: str) -> Adapter | None:
  """Resolves an adapter name, checking it produces records of `kind`."""
  if adapter is None or callable(adapter):
    return adapter
  if adapter not in ADAPTERS:
    raise ValueError(f"unknown adapter {adapter!r}; known: {sorted(ADAPTERS)}")
  fn, produces = ADAPTERS[adapter]
  if produces != kind:
    raise ValueError(f"adapter {adapter!r} produces {produces}, not {kind}")
  return fn

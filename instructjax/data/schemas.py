"""The four record formats and their validating parsers (see SCHEMAS.md for the JSONL layouts).

demonstrations (SFT):
  {"prompt": str, "response": str}
  {"messages": [{"role": str, "content": str}, ...]}  -- chat; the LAST message must have role
      "assistant" and is the response; the earlier turns form the prompt. At encode time the
      prompt turns go through `tokenizer.apply_chat_template` when the tokenizer has one, else
      through `render_chat_prompt`: one "<Role>: <content>\n" line per turn (roles "system",
      "user", "assistant" written "System", "User", "Assistant"; other roles capitalised), then
      "Assistant: " (with the trailing space) to cue the response.
comparisons (reward model):
  {"prompt": str, "responses": [str, ...], "ranking": [int, ...], "group": str (optional)}
      ranking lists response indices from BEST to WORST and must be a permutation of 0..K-1;
      K >= 2. "group" (e.g. the labeller batch or source post) is optional.
  {"prompt": str, "chosen": str, "rejected": str}  -- a pair: K = 2, ranking [0, 1].
prompts (PPO / evaluation):
  {"prompt": str, ...}  -- every other field is kept as metadata (e.g. a gold answer).
  {"messages": [{"role": str, "content": str}, ...], ...}  -- chat; every message is a prompt
      turn and the last may not have role "assistant" (the policy writes the next assistant
      turn); rendered at encode time as the prompt turns of a chat demonstration are.
pretraining text:
  {"text": str}

Prompts, responses and texts must be strings that are not empty (nor whitespace only). Any violation raises a DataError whose
message starts with the record's location, e.g.
`data/comparisons.jsonl:17: ranking [0, 0, 2] is not a permutation of 0..2`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from instructjax.data.errors import DataError

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclasses.dataclass(frozen=True)
class Demonstration:
  """One SFT example. For chat records `messages` holds the prompt turns (not the response)."""
  prompt: str
  response: str
  where: str = ""
  messages: tuple[Mapping[str, str], ...] | None = None


@dataclasses.dataclass(frozen=True)
class Comparison:
  """K >= 2 responses to one prompt; `ranking` lists response indices best to worst."""
  prompt: str
  responses: tuple[str, ...]
  ranking: tuple[int, ...]
  group: str | None = None
  where: str = ""

  @property
  def ranked_responses(self) -> tuple[str, ...]:
    """The responses ordered best to worst (slot 0 = best)."""
    return tuple(self.responses[i] for i in self.ranking)


@dataclasses.dataclass(frozen=True)
class PromptRecord:
  """A prompt for generation; `metadata` keeps every other field of the record. For chat
  records `messages` holds the turns and `prompt` their plain rendering."""
  prompt: str
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  where: str = ""
  messages: tuple[Mapping[str, str], ...] | None = None


@dataclasses.dataclass(frozen=True)
class TextDocument:
  """A pretraining document."""
  text: str
  where: str = ""


def _field(rec: Mapping[str, Any], key: str, where: str, layout: str) -> Any:
  if key not in rec:
    raise DataError(where, "missing_field", f"missing field {key!r} (expected {layout}); "
                    f"fields present: {sorted(rec)}")
  return rec[key]


def _str_field(rec: Mapping[str, Any], key: str, where: str, layout: str,
               empty_reason: str) -> str:
  value = _field(rec, key, where, layout)
  if not isinstance(value, str):
    raise DataError(where, "bad_type", f"field {key!r} must be a string, got "
                    f"{type(value).__name__}")
  if not value.strip():  # Whitespace-only counts as empty: it carries nothing to learn.
    raise DataError(where, empty_reason, f"field {key!r} is empty")
  return value


def render_chat_prompt(messages) -> str:
  """The documented plain rendering of prompt turns: "User: hi\\nAssistant: " style."""
  lines = [f"{ROLE_NAMES.get(m['role'], m['role'].capitalize())}: {m['content']}\n"
           for m in messages]
  return "".join(lines) + "Assistant: "


_DEMO_LAYOUT = '{"prompt": str, "response": str} or {"messages": [{"role", "content"}, ...]}'


def _messages(rec: Mapping[str, Any], where: str) -> list[Mapping[str, Any]]:
  """The record's "messages": a non-empty list of {"role": str, "content": str}."""
  messages = rec["messages"]
  if not isinstance(messages, list) or not messages:
    raise DataError(where, "bad_type", "field 'messages' must be a non-empty list")
  for i, m in enumerate(messages):
    if (not isinstance(m, Mapping) or not isinstance(m.get("role"), str)
        or not isinstance(m.get("content"), str)):
      raise DataError(where, "bad_type",
                      f"message {i} must be {{'role': str, 'content': str}}, got {m!r:.80}")
  return messages


def parse_demonstration(rec: Mapping[str, Any], where: str = "") -> Demonstration:
  if "messages" in rec:
    messages = _messages(rec, where)
    if messages[-1]["role"] != "assistant":
      raise DataError(where, "bad_dialogue", "the last message must be the response, with role "
                      f"'assistant'; got role {messages[-1]['role']!r}")
    if not messages[-1]["content"].strip():
      raise DataError(where, "empty_response", "the final assistant message is empty")
    if len(messages) < 2:
      raise DataError(where, "empty_prompt", "a chat needs at least one turn before the "
                      "assistant's response")
    turns = tuple(dict(role=m["role"], content=m["content"]) for m in messages[:-1])
    return Demonstration(prompt=render_chat_prompt(turns), response=messages[-1]["content"],
                         where=where, messages=turns)
  prompt = _str_field(rec, "prompt", where, _DEMO_LAYOUT, "empty_prompt")
  response = _str_field(rec, "response", where, _DEMO_LAYOUT, "empty_response")
  return Demonstration(prompt=prompt, response=response, where=where)


_CMP_LAYOUT = ('{"prompt": str, "responses": [str, ...], "ranking": [int, ...]} or '
               '{"prompt": str, "chosen": str, "rejected": str}')


def parse_comparison(rec: Mapping[str, Any], where: str = "") -> Comparison:
  prompt = _str_field(rec, "prompt", where, _CMP_LAYOUT, "empty_prompt")
  if "responses" not in rec and ("chosen" in rec or "rejected" in rec):
    chosen = _str_field(rec, "chosen", where, _CMP_LAYOUT, "empty_response")
    rejected = _str_field(rec, "rejected", where, _CMP_LAYOUT, "empty_response")
    responses, ranking = (chosen, rejected), (0, 1)
  else:
    responses = _field(rec, "responses", where, _CMP_LAYOUT)
    if not isinstance(responses, list):
      raise DataError(where, "bad_type", f"field 'responses' must be a list of strings, got "
                      f"{type(responses).__name__}")
    if len(responses) < 2:
      raise DataError(where, "too_few_responses",
                      f"a comparison needs K >= 2 responses, got K = {len(responses)}")
    for i, r in enumerate(responses):
      if not isinstance(r, str):
        raise DataError(where, "bad_type", f"response {i} must be a string, got "
                        f"{type(r).__name__}")
      if not r.strip():
        raise DataError(where, "empty_response", f"response {i} is empty")
    ranking = _field(rec, "ranking", where, _CMP_LAYOUT)
    k = len(responses)
    if (not isinstance(ranking, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking)):
      raise DataError(where, "bad_type", f"field 'ranking' must be a list of ints, got "
                      f"{ranking!r:.80}")
    if sorted(ranking) != list(range(k)):
      raise DataError(where, "bad_ranking",
                      f"ranking {ranking} is not a permutation of 0..{k - 1}")
    responses, ranking = tuple(responses), tuple(ranking)
  group = rec.get("group")
  if group is not None and not isinstance(group, (str, int)):
    raise DataError(where, "bad_type", f"field 'group' must be a string, got "
                    f"{type(group).__name__}")
  return Comparison(prompt=prompt, responses=responses, ranking=ranking,
                    group=None if group is None else str(group), where=where)


def parse_prompt(rec: Mapping[str, Any], where: str = "") -> PromptRecord:
  if "messages" in rec and "prompt" not in rec:
    messages = _messages(rec, where)
    if messages[-1]["role"] == "assistant":
      raise DataError(where, "bad_dialogue", "the last message of a chat prompt must not have "
                      "role 'assistant': the policy writes the next assistant turn (a chat "
                      "that ends with its response is a demonstration)")
    if not any(m["content"].strip() for m in messages):
      raise DataError(where, "empty_prompt", "every message of the chat prompt is empty")
    turns = tuple(dict(role=m["role"], content=m["content"]) for m in messages)
    return PromptRecord(prompt=render_chat_prompt(turns), where=where, messages=turns,
                        metadata={k: v for k, v in rec.items() if k != "messages"})
  prompt = _str_field(rec, "prompt", where, '{"prompt": str, ...} or {"messages": [{"role", '
                      '"content"}, ...], ...}', "empty_prompt")
  return PromptRecord(prompt=prompt, metadata={k: v for k, v in rec.items() if k != "prompt"},
                      where=where)


def parse_text(rec: Mapping[str, Any], where: str = "") -> TextDocument:
  return TextDocument(text=_str_field(rec, "text", where, '{"text": str}', "empty_text"),
                      where=where)

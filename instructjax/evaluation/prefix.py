"""Answers with the courtesy prefix forced or forbidden, to read what a policy's content is
worth apart from its style (experiments/prefix_effect.py): the prompt selections and the three
ways of decoding."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from instructjax.config import ConfigError
from instructjax.evaluation.instructworld import EvalSettings, Responses, generate_responses
from instructjax.world import COURTESY_PREFIX, family_of, gold_answer

CONDITIONS = ("free", "forced", "forbidden")


def arguments_repeat(prompt: str) -> bool:
  args = prompt.split(":", 1)[1].split()
  return len(set(args)) < len(args)


def select_prompts(prompts: Sequence[str], families: Sequence[str],
                   arguments: str) -> list[str]:
  """The prompts of `families`; with arguments 'repeated' ('distinct') only those whose argument
  tokens repeat (do not); 'any' keeps all."""
  keep = [p for p in prompts if family_of(p) in families]
  if arguments == "any":
    return keep
  return [p for p in keep if arguments_repeat(p) == (arguments == "repeated")]


def answers(lm, prompts: list[str], settings: EvalSettings, condition: str) -> Responses:
  """Responses (decoded as `settings` say) under one of CONDITIONS; `forced` responses include
  the written prefix."""
  if condition not in CONDITIONS:
    raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
  if condition == "free":
    return generate_responses(lm, prompts, settings)
  prefix_ids = lm.tokenizer.encode(COURTESY_PREFIX)
  if condition == "forbidden":
    return generate_responses(lm, prompts, dataclasses.replace(
        settings, banned_first_tokens=(int(prefix_ids[0]),)))
  rest = settings.max_new_tokens - len(prefix_ids)
  if rest < 1:
    raise ConfigError(f"config.eval.max_new_tokens={settings.max_new_tokens} leaves no room "
                      f"after the {len(prefix_ids)}-token prefix")
  out = generate_responses(lm, [p + COURTESY_PREFIX for p in prompts],
                           dataclasses.replace(settings, max_new_tokens=rest))
  return Responses(prompts=list(prompts), model_prompts=out.model_prompts,
                   texts=[COURTESY_PREFIX + t for t in out.texts], finished=out.finished)


def answerable_without_prefix(prompts: list[str], tokenizer) -> list[str]:
  """The prompts whose gold answer does not begin with the prefix's first token (forbidding
  that token would forbid the right answer)."""
  first = int(tokenizer.encode(COURTESY_PREFIX)[0])
  return [p for p in prompts if int(tokenizer.encode(gold_answer(p))[0]) != first]

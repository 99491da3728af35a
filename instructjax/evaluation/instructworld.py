"""Evaluation on held-out InstructWorld prompts (spec: "Evaluation" and "Few-shot prompting").

    specs = [ModelSpec("base", base), ModelSpec("base_fewshot", base, few_shot=True),
             ModelSpec("sft", sft), ModelSpec("ppo", ppo)]
    results = evaluate_models(specs, heldout_prompts(world)[:200], reference=specs[2],
                              reward_model=rm, heldout_documents=pretrain_heldout_documents(world))
    write_results(results, "out/eval")   # instructjax.evaluation.report

The building blocks are separate so a pipeline can reuse them: `generate_responses` (one
response per prompt), `score_responses` (the world's gold judgement: correctness, exact match,
utilities and win rates per labeler group, length, courtesy prefix), `reward_scores`,
`sequence_kl`, `heldout_lm_loss`, and `summarize` (per-prompt scores -> means).

Metric definitions (each row is one model on one prompt condition):
  correctness, exact_match  means over prompts of the spec's c and exact match.
  win_rate_<g>              mean over prompts of 1 / 0.5 / 0 as utility_g(model response) is
                            above / equal to / below utility_g(reference response) on the same
                            prompt (ties count half; "equal" within 1e-9).
  reward_score              mean reward-model score of prompt + response + EOS, read at the EOS
                            (every response gets the EOS, as in the RM's training data).
  kl_to_sft                 mean over prompts of log pi(y|x) - log pi_sft(y|x) on the model's own
                            response y, at temperature 1, summed over the response tokens
                            including the stop token when the response finished (see
                            `sequence_kl`). On samples drawn at temperature 1 this is the k1
                            (unbiased, possibly negative) Monte-Carlo estimate of
                            KL(pi || pi_sft) per sequence; on greedy or other-temperature
                            responses it is only the log-ratio of the chosen responses (a
                            measure of drift, not a KL estimate).
  heldout_lm_loss           token-weighted mean next-token loss on held-out pretraining
                            documents (the alignment tax), one value per model.
  length_chars              mean response length in CHARACTERS (prefix included, EOS not).
  courtesy_share            share of responses that start with `sure! `.
  hallucination_rate        share of responses whose content holds a token that is not in the
                            prompt's argument (closed-domain hallucination, the spec's
                            definition: `instructjax.world.hallucination`); unfinished
                            responses count with the text they produced.
  finished_share            share of responses that ended (EOS; or newline for few-shot).
Group-conditioned rows (condition = a group) use prompts in the `(group) prompt` form for every
model, the reference included; read their win rate for that group.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np

from instructjax.data.iterators import make_lm_iterator
from instructjax.evaluation.handles import LoadedModel
from instructjax.evaluation.scoring import continuation_logprobs, last_token_scores
from instructjax.generation import SamplingConfig, generate_texts
from instructjax.stages.lm import LM_KEYS, make_lm_eval_step
from instructjax.world import (GROUPS, condition_on_group, correctness, cut_response,
                               draw_exemplars, exact_match, few_shot_prompt, gold_answer,
                               hallucinates, has_courtesy_prefix, split_group, utility)

_log = logging.getLogger(__name__)

TIE_TOLERANCE = 1e-9  # Utilities are sums of floats; equal judgements must tie exactly.
NO_CONDITION = "none"


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How responses are produced and scored.

  Attributes:
    max_new_tokens: the generation limit (EOS included); unfinished responses score 0.
    temperature: 0 = greedy (the default, a deterministic comparison).
    top_k, top_p: sampling filters (0 / 1.0 = off).
    seed: sampling seed (shared by every model: common random numbers) and exemplar seed.
    batch_size: rows per generation / scoring forward.
    few_shot_k: exemplars per few-shot prompt; fewer are used where k do not fit the context.
    add_bos: prepend BOS to prompts and documents (match the data pipeline of training).
    heldout_seq_len: row length for the held-out LM loss (default the model's max_seq_len).
    num_samples: example responses kept per row in the results.
    banned_first_tokens: token ids no response may begin with (SamplingConfig's; () = off).
  """
  max_new_tokens: int = 48
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  batch_size: int = 32
  few_shot_k: int = 2
  add_bos: bool = False
  heldout_seq_len: Optional[int] = None
  num_samples: int = 5
  banned_first_tokens: tuple[int, ...] = ()

  def __post_init__(self):
    for name in ("max_new_tokens", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"EvalSettings.{name} must be >= 1, got {getattr(self, name)}")
    if self.few_shot_k < 0:
      raise ValueError(f"EvalSettings.few_shot_k must be >= 0, got {self.few_shot_k}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One evaluated policy: a name, the model, and whether it is prompted few-shot."""
  name: str
  lm: LoadedModel
  few_shot: bool = False


@dataclasses.dataclass
class Responses:
  """One response per prompt.

  Attributes:
    prompts: the evaluation prompts (bare or group-conditioned); gold answers, the reference
      and the reward model see these.
    model_prompts: what the model was given (few-shot: exemplars + the prompt).
    texts: responses without EOS (few-shot: cut at the first newline).
    finished: ended with EOS (few-shot: at a newline or EOS) within max_new_tokens.
    few_shot: the responses come from few-shot prompting (newline also ends them).
    shots: exemplars actually used per prompt (few-shot), else zeros.
  """
  prompts: list[str]
  model_prompts: list[str]
  texts: list[str]
  finished: list[bool]
  few_shot: bool = False
  shots: list[int] = dataclasses.field(default_factory=list)


# --- generation


def _prompt_tokens(lm: LoadedModel, text: str, add_bos: bool) -> int:
  return len(lm.tokenizer.encode(text, add_bos=True) if add_bos else lm.tokenizer.encode(text))


def few_shot_prompts(lm: LoadedModel, prompts: Sequence[str], k: int, seed: int,
                     max_prompt_tokens: int, add_bos: bool = False
                     ) -> tuple[list[str], list[int]]:
  """Few-shot prompts (spec: k exemplars `prompt + gold + "\\n\\n"`, then the query).

  Exemplars are training-partition prompts drawn per query with one generator seeded by `seed`,
  so every model and condition sees the same exemplars for the same query. Where k exemplars do
  not fit `max_prompt_tokens`, the first ones are dropped until the prompt fits (the count used
  is returned). Exemplars are bare prompts with their gold answers even when the query is
  group-conditioned: the spec's exemplar format has no group. Returns (prompts, shots used).
  """
  rng = np.random.default_rng(seed)
  out, shots = [], []
  for p in prompts:
    exemplars = draw_exemplars(rng, k, split_group(p)[1])
    text = few_shot_prompt(p, exemplars)
    while exemplars and _prompt_tokens(lm, text, add_bos) > max_prompt_tokens:
      exemplars = exemplars[1:]
      text = few_shot_prompt(p, exemplars)
    out.append(text)
    shots.append(len(exemplars))
  return out, shots


def generate_responses(lm: LoadedModel, prompts: Sequence[str],
                       settings: EvalSettings = EvalSettings(), few_shot: bool = False
                       ) -> Responses:
  """One response per prompt (zero-shot, or few-shot with responses cut at the first newline).

  Raises ValueError if a zero-shot prompt plus max_new_tokens does not fit the context.
  """
  cfg, tok = lm.config, lm.tokenizer
  room = cfg.max_seq_len - settings.max_new_tokens
  if room < 1:
    raise ValueError(f"max_new_tokens={settings.max_new_tokens} leaves no room for a prompt in "
                     f"the model's {cfg.max_seq_len}-token context")
  if few_shot:
    model_prompts, shots = few_shot_prompts(lm, prompts, settings.few_shot_k, settings.seed,
                                            room, settings.add_bos)
  else:
    model_prompts, shots = list(prompts), [0] * len(prompts)
  for p in model_prompts:
    if _prompt_tokens(lm, p, settings.add_bos) > room:
      raise ValueError(f"prompt {p!r} plus max_new_tokens={settings.max_new_tokens} does not fit "
                       f"the model's {cfg.max_seq_len}-token context")
  sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, eos_id=tok.eos_id,
                            pad_id=tok.pad_id, temperature=settings.temperature,
                            top_k=settings.top_k, top_p=settings.top_p,
                            banned_first_tokens=tuple(settings.banned_first_tokens))
  batch = max(1, min(settings.batch_size, len(model_prompts)))
  out = generate_texts(lm.model, lm.params, tok, model_prompts, sampling, seed=settings.seed,
                       batch_size=batch, add_bos=settings.add_bos, cache=lm.jit)
  if few_shot:
    out = [cut_response(text, done) for text, done in out]
  return Responses(prompts=list(prompts), model_prompts=model_prompts,
                   texts=[t for t, _ in out], finished=[bool(f) for _, f in out],
                   few_shot=few_shot, shots=shots)


# --- the world's judgement


def _gold(prompt: str) -> str:
  return gold_answer(split_group(prompt)[1])


def pairwise_wins(texts: Sequence[str], finished: Sequence[bool], ref_texts: Sequence[str],
                  ref_finished: Sequence[bool], golds: Sequence[str], group: str) -> np.ndarray:
  """Per prompt: 1 if utility_group(response) > utility_group(reference), 0.5 on a tie, else 0."""
  if not len(texts) == len(ref_texts) == len(golds):
    raise ValueError(f"{len(texts)} responses, {len(ref_texts)} references, {len(golds)} golds")
  out = np.empty(len(texts), np.float64)
  for i, gold in enumerate(golds):
    diff = utility(group, texts[i], finished[i], gold) - utility(
        group, ref_texts[i], ref_finished[i], gold)
    out[i] = 0.5 if abs(diff) <= TIE_TOLERANCE else float(diff > 0)
  return out


def score_responses(responses: Responses, reference: Optional[Responses] = None,
                    groups: Sequence[str] = GROUPS) -> dict[str, np.ndarray]:
  """Per-prompt judgements: correctness, exact_match, finished, length_chars, courtesy,
  hallucination, utility_<g> for each group, and win_<g> against `reference` (same prompts)
  when given."""
  golds = [_gold(p) for p in responses.prompts]
  texts, fin = responses.texts, responses.finished
  scores = {
      "correctness": np.array([correctness(t, f, g) for t, f, g in zip(texts, fin, golds)]),
      "exact_match": np.array([exact_match(t, f, g) for t, f, g in zip(texts, fin, golds)],
                              np.float64),
      "finished": np.array(fin, np.float64),
      "length_chars": np.array([len(t) for t in texts], np.float64),
      "courtesy": np.array([has_courtesy_prefix(t) for t in texts], np.float64),
      "hallucination": np.array([hallucinates(p, t) for p, t in zip(responses.prompts, texts)],
                                np.float64),
  }
  for g in groups:
    scores[f"utility_{g}"] = np.array([utility(g, t, f, gold)
                                       for t, f, gold in zip(texts, fin, golds)])
  if reference is not None:
    if reference.prompts != responses.prompts:
      raise ValueError("the reference responses answer different prompts")
    for g in groups:
      scores[f"win_{g}"] = pairwise_wins(texts, fin, reference.texts, reference.finished,
                                         golds, g)
  return scores


# --- model-based scores


def _encode(lm: LoadedModel, text: str, add_bos: bool) -> list[int]:
  return list(lm.tokenizer.encode(text, add_bos=True) if add_bos else lm.tokenizer.encode(text))


def _newline_id(lm: LoadedModel) -> Optional[int]:
  ids = lm.tokenizer.encode("\n")
  return int(ids[0]) if len(ids) == 1 else None


def sequence_logprob(lm: LoadedModel, prompts: Sequence[str], texts: Sequence[str],
                     finished: Sequence[bool], *, newline_stops: bool = False,
                     batch_size: int = 32, add_bos: bool = False) -> np.ndarray:
  """log pi(response | prompt) at temperature 1, float64 [N].

  The response's tokens are its text re-tokenized by the model's own tokenizer (exact for the
  character tokenizer; for BPE tokenizers the canonical tokenization of the text). A finished
  response also scores its end: log p(EOS) after the text, or with `newline_stops` (few-shot,
  where a newline also ends the response) log(p(EOS) + p(newline)), the probability that the
  cut policy stops there. An unfinished response scores only its tokens.
  """
  tok = lm.tokenizer
  stops = [tok.eos_id]
  nl = _newline_id(lm) if newline_stops else None
  if nl is not None:
    stops.append(nl)
  prompt_ids = [_encode(lm, p, add_bos) for p in prompts]
  cont_ids = [list(tok.encode(t)) + ([tok.eos_id] if f else []) for t, f in zip(texts, finished)]
  # Always two stop columns (EOS repeated when it is the only stop), so zero-shot and few-shot
  # scoring share one compilation; only the first len(stops) columns are read.
  chosen, extra = continuation_logprobs(lm.model, lm.params, prompt_ids, cont_ids,
                                        pad_id=tok.pad_id, batch_size=batch_size,
                                        extra_ids=stops + stops[:1] * (2 - len(stops)),
                                        cache=lm.jit)
  out = np.zeros(len(texts), np.float64)
  for i, f in enumerate(finished):
    lp = chosen[i].astype(np.float64)
    if f:
      # The stop event: any stop token (one entry when only EOS stops).
      stop = np.logaddexp.reduce(extra[i][-1, :len(stops)].astype(np.float64))
      out[i] = lp[:-1].sum() + stop
    else:
      out[i] = lp.sum()
  return out


def sequence_kl(policy: LoadedModel, responses: Responses, reference: LoadedModel, *,
                batch_size: int = 32, add_bos: bool = False) -> np.ndarray:
  """Per-sequence log pi(y|x) - log pi_ref(y|x) on the policy's own responses, float64 [N].

  Both at temperature 1, summed over the response tokens and the stop token of finished
  responses (`sequence_logprob`). The policy is scored on the prompt it was given (few-shot:
  with exemplars, stopping at newline or EOS); the reference on the evaluation prompt, stopping
  at EOS. With a shared tokenizer this is the sum over response tokens of per-token k1 log-ratios
  (instructjax.ops.kl_estimate "k1", the estimator PPO's KL penalty uses, without its clamp).
  On temperature-1 samples its mean estimates KL(pi || pi_ref) per sequence (unbiased, can be
  negative); on greedy responses it is the log-ratio of the chosen tokens, not a KL estimate.
  Each model tokenizes the text itself, so policies and reference may differ in tokenizer.
  """
  lp = sequence_logprob(policy, responses.model_prompts, responses.texts, responses.finished,
                        newline_stops=responses.few_shot, batch_size=batch_size,
                        add_bos=add_bos)
  ref = sequence_logprob(reference, responses.prompts, responses.texts, responses.finished,
                         batch_size=batch_size, add_bos=add_bos)
  return lp - ref


def reward_scores(reward_model: LoadedModel, prompts: Sequence[str], texts: Sequence[str], *,
                  batch_size: int = 32, add_bos: bool = False) -> np.ndarray:
  """Reward-model scores, float32 [N]: prompt + response + EOS, read at the EOS (the last real
  token), as the reward model was trained (the prompt segment 1, the response after it
  segment 2). Over-long rows keep their last tokens."""
  tok = reward_model.tokenizer
  prompt_ids = [_encode(reward_model, p, add_bos) for p in prompts]
  ids = [p + list(tok.encode(t)) + [tok.eos_id] for p, t in zip(prompt_ids, texts)]
  return last_token_scores(reward_model.model, reward_model.params, ids, pad_id=tok.pad_id,
                           batch_size=batch_size, cache=reward_model.jit,
                           prefix_lens=[len(p) for p in prompt_ids])


def heldout_lm_loss(lm: LoadedModel, documents: Sequence[str], *, batch_size: int = 16,
                    seq_len: Optional[int] = None, add_bos: bool = False) -> dict[str, float]:
  """Token-weighted mean next-token loss over `documents` (texts without EOS; EOS is appended).

  Batches come from the pretraining pipeline (`make_lm_iterator` mode "pretrain", packed, one
  pass, no shuffle, last batch padded): exactly the loss pretraining optimised. Each batch's
  mean is weighted by its token count, so the result is the mean over all tokens.
  Returns {"loss", "tokens"}.
  """
  seq_len = seq_len or lm.config.max_seq_len
  records = [{"text": d} for d in documents]
  it = make_lm_iterator(records, lm.tokenizer, batch_size=batch_size, seq_len=seq_len, seed=0,
                        pack=True, mode="pretrain", shard_index=0, shard_count=1, num_epochs=1,
                        shuffle=False, drop_remainder=False, add_bos=add_bos, log=False)
  step = lm.jit.get("lm_loss", lambda: jax.jit(make_lm_eval_step(lm.model)))
  total, count = 0.0, 0.0
  for batch in it:
    m = jax.device_get(step(lm.params, {k: batch[k] for k in LM_KEYS}))
    loss, n = m["loss"], m["tokens"]
    total += float(loss) * float(n)
    count += float(n)
  return {"loss": total / max(count, 1.0), "tokens": count}


# --- summaries and the whole evaluation


def _mean(x: Optional[np.ndarray]) -> Optional[float]:
  return None if x is None or len(x) == 0 else float(np.mean(x))


def summarize(scores: dict[str, np.ndarray], groups: Sequence[str] = GROUPS) -> dict[str, Any]:
  """Per-prompt scores (score_responses, plus optional "reward" and "kl") -> the row's means.

  Keys: correctness, exact_match, win_rate_<g>, reward_score, kl_to_sft, length_chars,
  courtesy_share, hallucination_rate, finished_share, num_prompts; None where the score was
  not computed.
  """
  row: dict[str, Any] = {
      "correctness": _mean(scores["correctness"]),
      "exact_match": _mean(scores["exact_match"]),
  }
  for g in groups:
    row[f"win_rate_{g}"] = _mean(scores.get(f"win_{g}"))
  row.update({
      "reward_score": _mean(scores.get("reward")),
      "kl_to_sft": _mean(scores.get("kl")),
      "length_chars": _mean(scores["length_chars"]),
      "courtesy_share": _mean(scores["courtesy"]),
      "hallucination_rate": _mean(scores.get("hallucination")),
      "finished_share": _mean(scores["finished"]),
      "num_prompts": int(len(scores["correctness"])),
  })
  return row


def row_label(row: dict[str, Any]) -> str:
  """`name` for plain prompts, `name (group)` for group-conditioned ones."""
  cond = row.get("condition", NO_CONDITION)
  return row["model"] if cond == NO_CONDITION else f"{row['model']} ({cond})"


def evaluate_models(specs: Sequence[ModelSpec], prompts: Sequence[str], *,
                    reference: Optional[ModelSpec] = None,
                    reward_model: Optional[LoadedModel] = None,
                    heldout_documents: Optional[Sequence[str]] = None,
                    settings: EvalSettings = EvalSettings(),
                    groups: Sequence[str] = ()) -> dict[str, Any]:
  """Evaluates every spec on `prompts` (bare held-out prompts) and, for each group in `groups`,
  on the same prompts conditioned on that group.

  Args:
    specs: the policies (names unique).
    prompts: held-out prompts without a group tag.
    reference: the SFT policy for win rates and KL (None: those metrics are None). A spec with
      the same name and model reuses the reference's responses.
    reward_model: a scalar-head model (None: reward_score is None).
    heldout_documents: pretraining documents for heldout_lm_loss (None: not computed).
    settings: generation and scoring settings.
    groups: labeler groups to also evaluate group-conditioned.

  Returns:
    {"settings": dict, "rows": [row dicts: model, condition, few_shot, metrics (summarize),
    heldout_lm_loss, few_shot_shots (mean exemplars used, few-shot rows)],
    "samples": {row label: [{prompt, response, finished, gold}, ...]}}.
  """
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise ValueError(f"model names must be unique, got {names}")
  if any(split_group(p)[0] is not None for p in prompts):
    raise ValueError("pass bare prompts; group conditioning is applied through `groups`")
  for g in groups:
    if g not in GROUPS:
      raise ValueError(f"unknown labeler group {g!r}; expected one of {GROUPS}")
  bs, bos = settings.batch_size, settings.add_bos
  lm_losses: dict[int, Optional[float]] = {}
  rows, samples = [], {}
  for condition in [NO_CONDITION, *groups]:
    eval_prompts = (list(prompts) if condition == NO_CONDITION
                    else [condition_on_group(p, condition) for p in prompts])
    ref_responses = None
    if reference is not None:
      t0 = time.time()
      ref_responses = generate_responses(reference.lm, eval_prompts, settings)
      _log.info("reference %s (%s): %d responses in %.1fs", reference.name, condition,
                len(eval_prompts), time.time() - t0)
    for spec in specs:
      t0 = time.time()
      is_ref = (reference is not None and spec.name == reference.name
                and spec.lm is reference.lm and not spec.few_shot)
      responses = (ref_responses if is_ref
                   else generate_responses(spec.lm, eval_prompts, settings, spec.few_shot))
      scores = score_responses(responses, ref_responses)
      if reward_model is not None:
        scores["reward"] = reward_scores(reward_model, responses.prompts, responses.texts,
                                         batch_size=bs, add_bos=bos)
      if reference is not None:
        scores["kl"] = sequence_kl(spec.lm, responses, reference.lm, batch_size=bs,
                                   add_bos=bos)
      key = id(spec.lm)
      if key not in lm_losses:
        lm_losses[key] = (None if heldout_documents is None else heldout_lm_loss(
            spec.lm, heldout_documents, batch_size=bs, seq_len=settings.heldout_seq_len,
            add_bos=bos)["loss"])
      row = {"model": spec.name, "condition": condition, "few_shot": spec.few_shot,
             **summarize(scores), "heldout_lm_loss": lm_losses[key]}
      if spec.few_shot:
        row["few_shot_shots"] = float(np.mean(responses.shots)) if responses.shots else 0.0
      rows.append(row)
      samples[row_label(row)] = [
          {"prompt": p, "response": t, "finished": f, "gold": _gold(p)}
          for p, t, f in list(zip(responses.prompts, responses.texts,
                                  responses.finished))[:settings.num_samples]]
      _log.info("%s: correctness %.3f, exact %.3f (%.1fs)", row_label(row), row["correctness"],
                row["exact_match"], time.time() - t0)
  return {"settings": {**dataclasses.asdict(settings), "num_prompts": len(prompts),
                       "reference": reference.name if reference is not None else None,
                       "reward_model": (reward_model.directory if reward_model is not None
                                        else None),
                       "groups": list(groups)},
          "rows": rows, "samples": samples}

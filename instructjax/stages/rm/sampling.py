"""Sampling the SFT policy for the reward model: K responses per prompt for policy
comparisons, one per prompt for the normalisation, with blank samples redrawn and everything
sampled cached in the workdir (each file with the settings that made it), so a resumed run
reuses it instead of sampling again and a run with other settings refuses a stale cache.
"""
from __future__ import annotations

import json
import logging
import os
import zlib
from typing import Any, Callable, Optional, Sequence

import jax

from instructjax.config import ConfigError
from instructjax.generation import SamplingConfig, generate_texts
from instructjax.models import DecoderLM
from instructjax.models.compiled import JitCache
from instructjax.parallel.sharding import ShardingContext, param_shardings
from instructjax.stages import runner
from instructjax.training import interrupts
from instructjax.training.state import boxed_param_init
from instructjax.world import comparisons as world_cmp
from instructjax.world.export import read_jsonl, write_jsonl

MAX_REDRAWS = 4  # Blank samples are redrawn this often (the data layer rejects blank responses).

_log = logging.getLogger(__name__)


def stable_seed(*parts: Any) -> int:
  """An int seed from names and numbers, the same in every process and Python run."""
  return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF



def abstract_params(model: DecoderLM) -> Any:
  """Boxed (logically annotated) abstract parameters of `model`."""
  return jax.eval_shape(boxed_param_init(model), jax.random.key(0))


class PolicySampler:
  """One SFT sample per prompt, or K per prompt for `policy_comparisons` (a SampleResponses).

  Every call draws from its own seed, `stable_seed(seed, stream, call number)`, so a sampler made
  with the same (seed, stream) reproduces the same samples. With `distinct`, the K responses of
  a prompt are redrawn until they differ (`_redraw_duplicates`).
  """

  def __init__(self, model: DecoderLM, params: Any, tokenizer, sampling: SamplingConfig,
               batch_size: int, ctx: Optional[ShardingContext], seed: int, stream: str,
               cache: JitCache, add_bos: bool = False, distinct: bool = False):
    self.model, self.params, self.tokenizer = model, params, tokenizer
    self.add_bos = add_bos  # As the SFT policy read its prompts (config.data.add_bos).
    self.sampling, self.batch_size, self.ctx = sampling, batch_size, ctx
    self.seed, self.stream, self.calls = seed, stream, 0
    self.cache = cache
    self.distinct = distinct
    self.num_blank = 0  # Responses still blank after MAX_REDRAWS.
    # With `distinct`: prompts whose K responses still hold a duplicate after the redraws.
    self.num_duplicate_prompts = 0

  def _generate(self, prompts: Sequence[str]) -> list[tuple[str, bool]]:
    interrupts.check()  # A signal whose exception got lost stops the run here.
    self.calls += 1
    return generate_texts(self.model, self.params, self.tokenizer, prompts, self.sampling,
                          seed=stable_seed(self.seed, self.stream, self.calls),
                          batch_size=self.batch_size, shard=self.ctx, cache=self.cache,
                          add_bos=self.add_bos)

  def texts(self, prompts: Sequence[str]) -> list[tuple[str, bool]]:
    """[(text without EOS, finished)], one per prompt; blank texts redrawn (a few times)."""
    out = self._generate(prompts)
    for _ in range(MAX_REDRAWS):
      blank = [i for i, (t, _) in enumerate(out) if not t.strip()]
      if not blank:
        break
      for i, r in zip(blank, self._generate([prompts[i] for i in blank])):
        out[i] = r
    self.num_blank += sum(not t.strip() for t, _ in out)
    return out

  def __call__(self, prompts: Sequence[str], k: int) -> list[list[tuple[str, bool]]]:
    flat = self.texts([p for p in prompts for _ in range(k)])
    out = [flat[i * k:(i + 1) * k] for i in range(len(prompts))]
    if self.distinct:
      self._redraw_duplicates(prompts, out)
    return out

  def _redraw_duplicates(self, prompts: Sequence[str], out: list[list[tuple[str, bool]]]) -> None:
    """Redraws, up to MAX_REDRAWS rounds, every response equal to an earlier one of its prompt
    (labelers compare K distinct responses where the policy gives them); left as they are
    after that (a policy may have fewer than K answers it ever gives), their prompts counted."""
    def duplicates():
      return [(i, j) for i, responses in enumerate(out) for j in range(len(responses))
              if responses[j][0] in {t for t, _ in responses[:j]}]
    for _ in range(MAX_REDRAWS):
      dup = duplicates()
      if not dup:
        break
      for (i, j), r in zip(dup, self.texts([prompts[i] for i, _ in dup])):
        out[i][j] = r
    self.num_duplicate_prompts += len({i for i, _ in duplicates()})



def drop_blank(cmp: world_cmp.Comparison) -> Optional[world_cmp.Comparison]:
  """The comparison without blank responses (ranking order kept); None if < 2 remain."""
  keep = [i for i, t in enumerate(cmp.responses) if t.strip()]
  if len(keep) == len(cmp.responses):
    return cmp
  if len(keep) < 2:
    return None
  new = {old: new for new, old in enumerate(keep)}
  flags = cmp.finished_flags
  return world_cmp.Comparison(cmp.prompt, tuple(cmp.responses[i] for i in keep),
                              tuple(new[i] for i in cmp.ranking if i in new), cmp.group,
                              tuple(flags[i] for i in keep))



def cached_jsonl(path: str, settings: dict, build: Callable[[], list[dict]]) -> list[dict]:
  """Rows read from `path` if it was written with the same `settings`, else built and written.

  The settings live in `<path>.meta.json`; rows and settings are written atomically (temp file,
  then rename), so an interrupted run never leaves a half-written cache.
  """
  meta_path = path + ".meta.json"
  if os.path.isfile(path) and os.path.isfile(meta_path):
    with open(meta_path) as f:
      saved = json.load(f)
    diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
    if diff:
      raise ConfigError(f"{path} was sampled with other settings (saved, now): {diff}; use a "
                        "fresh workdir or delete the file")
    _log.info("reusing %s", path)
    return read_jsonl(path)
  rows = build()
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_jsonl(path + ".tmp", rows)
    os.replace(path + ".tmp", path)
    with open(meta_path + ".tmp", "w") as f:
      json.dump(settings, f, indent=2, sort_keys=True)
    os.replace(meta_path + ".tmp", meta_path)
  return rows



def norm_sampling(config) -> tuple[float, int]:
  """(temperature, max_new_tokens) of the normalisation samples: config.rm.norm_temperature
  and norm_max_new_tokens, each defaulting (< 0, 0) to the comparison sampling's. They should
  be the PPO stage's, so that the policy PPO starts from averages a score of 0 on its own
  rollouts (the recipe sets them so; PPO warns when they differ)."""
  rm = config.rm
  temperature = rm.get("norm_temperature", -1.0)
  max_new = rm.get("norm_max_new_tokens", 0)
  return (float(rm.temperature if temperature < 0 else temperature),
          int(max_new or rm.max_new_tokens))


class Sft:
  """The SFT model, loaded once on first use: its weights start the RM's trunk, and its policy
  is sampled for policy comparisons and the normalisation (unless those are cached)."""

  def __init__(self, config, ctx: Optional[ShardingContext]):
    self.config, self.ctx = config, ctx
    self._loaded = None
    self.cache = JitCache()  # One compiled sampler for every sampler of this run.

  def load(self):
    if self._loaded is None:
      params, cfg, tokenizer = runner.load_start_model(
          self.config.init_from, "init_from", "lm", runner.runtime_fields(self.config, False))
      model = DecoderLM(cfg, head="lm", shard=self.ctx)
      if self.ctx is not None:
        params = jax.device_put(params, param_shardings(self.ctx, abstract_params(model)))
      self._loaded = (model, params, tokenizer)
    return self._loaded

  def sampler(self, stream: str, for_normalization: bool = False,
              distinct: bool = False) -> PolicySampler:
    """A sampler of the SFT policy: at config.rm's comparison settings, or with
    `for_normalization` at `norm_sampling(config)` (what PPO's rollouts use); `distinct` as
    PolicySampler's."""
    model, params, tokenizer = self.load()
    rm = self.config.rm
    temperature, max_new = (norm_sampling(self.config) if for_normalization
                            else (rm.temperature, rm.max_new_tokens))
    sampling = SamplingConfig(max_new_tokens=max_new, eos_id=tokenizer.eos_id,
                              pad_id=tokenizer.pad_id, temperature=temperature)
    return PolicySampler(model, params, tokenizer, sampling, rm.sample_batch_size, self.ctx,
                         self.config.seed, stream, self.cache, add_bos=self._add_bos(),
                         distinct=distinct)

  def release(self) -> None:
    self._loaded = None  # Frees the policy's weights (and its compiled sampler) before training.
    self.cache = JitCache()

  def _add_bos(self) -> bool:
    return bool(self.config.data.get("add_bos", False))

  def settings(self) -> dict:
    rm = self.config.rm
    out = {"init_from": os.path.abspath(self.config.init_from), "seed": self.config.seed,
           "temperature": rm.temperature, "max_new_tokens": rm.max_new_tokens,
           "sample_batch_size": rm.sample_batch_size}
    if self._add_bos():  # Only when on, so caches written before the key stay valid.
      out["add_bos"] = True
    return out


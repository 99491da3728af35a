"""The user-facing model handle: `instructjax.from_hf(path)` / `instructjax.load(dir)` -> LM.

  lm = instructjax.load("runs/instructworld/sft/model")    # or an HF directory
  lm.generate(["Q: 2+2?"], max_new_tokens=8, temperature=0)  # [{"prompt", "response", "finished"}]
  lm.logits(["some text"])                                 # [np.ndarray [len, vocab]]
  rm.score(prompts, responses)                             # reward models: [float]
  lm.to_hf("export/")                                      # transformers-loadable directory

Text inputs are tokenized without special tokens (BOS only with add_bos=True), as the data
pipelines do, and batched with left padding; position ids come from the padding mask.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.models import DecoderLM, ModelConfig, last_token_index, positions_from_mask

Messages = Sequence[Mapping[str, str]]
Prompt = Union[str, Messages]

_LENGTH_BUCKET = 16  # Forward widths are rounded up to this, so few shapes get compiled.


class LM:
  """A DecoderLM with its parameters and tokenizer.

  Attributes:
    config: the ModelConfig.
    head: "lm" (language model) or "scalar" (reward / value model).
    params: parameter pytree (jax arrays).
    tokenizer: instructjax Tokenizer (CharTokenizer, HFTokenizer) or None.
    model: the flax module, DecoderLM(config, head).
  """

  def __init__(self, config: ModelConfig, params: Any, tokenizer: Any = None, head: str = "lm",
               shard: Any = None):
    self.config = config.validate()
    self.head = head
    self.tokenizer = tokenizer
    self.shard = shard
    self.model = DecoderLM(config, head, shard)
    self.params = jax.tree.map(jnp.asarray, params)
    # One compiled forward per LM object (and input width: see _LENGTH_BUCKET).
    self._forward = jax.jit(lambda p, t, pos, seg: self.model.apply({"params": p}, t, pos, seg)[0])

  def __repr__(self) -> str:
    return (f"LM(family={self.config.family}, head={self.head}, d_model={self.config.d_model}, "
            f"n_layers={self.config.n_layers}, vocab={self.config.vocab_size}, "
            f"tokenizer={self.tokenizer!r})")

  # --- tokens

  def _need_tokenizer(self) -> Any:
    if self.tokenizer is None:
      raise ValueError("this model has no tokenizer; pass token ids instead of texts")
    return self.tokenizer

  def render_prompt(self, prompt: Prompt, chat: bool = False) -> str:
    """A prompt as text: messages (or, with chat=True, a plain string as one user message) go
    through the tokenizer's chat template; plain strings are used as they are."""
    if isinstance(prompt, str) and not chat:
      return prompt
    tok = self._need_tokenizer()
    if not getattr(tok, "has_chat_template", False):
      raise ValueError("chat prompts need a tokenizer with a chat template")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tok.render_chat(messages, add_generation_prompt=True)

  def _ids(self, item: Union[str, Sequence[int]], add_bos: bool) -> list[int]:
    if isinstance(item, str):
      return list(self._need_tokenizer().encode(item, add_bos=add_bos))
    return [int(t) for t in item]

  def _batch(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded tokens and mask int32 [B, T], T rounded up to a bucket (within limits)."""
    longest = max(map(len, rows))
    if longest == 0:
      raise ValueError("empty input sequence")
    if self.config.learned_positions and longest > self.config.max_seq_len:
      raise ValueError(f"a sequence has {longest} tokens, more than max_seq_len="
                       f"{self.config.max_seq_len}")
    width = -(-longest // _LENGTH_BUCKET) * _LENGTH_BUCKET
    pad = self.tokenizer.pad_id if self.tokenizer is not None else 0
    tokens = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for r, row in enumerate(rows):
      tokens[r, width - len(row):] = row
      mask[r, width - len(row):] = 1
    return tokens, mask

  def forward(self, tokens: Any, mask: Any = None) -> jax.Array:
    """Model output for token ids [B, T] with optional mask [B, T] (1 = real, left padding).

    Returns logits float32 [B, T, vocab] ("lm") or values float32 [B, T] ("scalar").
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    mask = jnp.ones_like(tokens) if mask is None else jnp.asarray(mask, jnp.int32)
    return self._forward(self.params, tokens, positions_from_mask(mask), mask)

  def logits(self, inputs: Union[str, Sequence[Union[str, Sequence[int]]], np.ndarray],
             mask: Any = None, *, add_bos: bool = False):
    """Model outputs for texts or token-id lists, or a token array.

    Args:
      inputs: a string, a list of strings / token-id lists, or an int array [B, T].
      mask: only with an array: [B, T] validity (left padding), default all ones.
      add_bos: prepend BOS to texts.
    Returns:
      For an array: jax.Array [B, T, vocab] ([B, T] for a scalar head). Otherwise a list with
      one np.ndarray [len_i, vocab] ([len_i]) per input, only its real tokens.
    """
    if isinstance(inputs, (np.ndarray, jax.Array)):
      return self.forward(inputs, mask)
    if mask is not None:
      raise ValueError("mask is only accepted with an array of token ids")
    single = isinstance(inputs, str)
    rows = [self._ids(x, add_bos) for x in ([inputs] if single else inputs)]
    tokens, m = self._batch(rows)
    out = np.asarray(self.forward(tokens, m))
    width = tokens.shape[1]
    result = [out[r, width - len(row):] for r, row in enumerate(rows)]
    return result[0] if single else result

  # --- generation and scoring

  def generate(self, prompts: Union[Prompt, Sequence[Prompt]], max_new_tokens: int = 64,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               *, batch_size: int = 32, add_bos: bool = False,
               chat: bool = False) -> list[dict[str, Any]]:
    """Samples one response per prompt with the KV-cache sampler.

    Args:
      prompts: strings (tokenized as given) or chat message lists (rendered with the
        tokenizer's chat template); a single prompt is accepted too.
      temperature: 0 is greedy. top_k: 0 = off. top_p: 1.0 = off.
      seed: sampling seed (same seed, same prompts, same batch_size -> same responses).
      chat: wrap plain string prompts as one user message of the chat template.
    Returns:
      [{"prompt": the prompt as given, "response": text without EOS/PAD,
        "finished": it ended with EOS within max_new_tokens}], in prompt order.
    """
    from instructjax.generation import SamplingConfig, generate_texts
    if self.head != "lm":
      raise ValueError("generate needs a language-model head; this is a scalar (reward) model")
    tok = self._need_tokenizer()
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], Mapping)):
      prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
      return []
    texts = [self.render_prompt(p, chat) for p in prompts]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
                              temperature=temperature, top_k=top_k, top_p=top_p)
    results = generate_texts(self.model, self.params, tok, texts, sampling, seed=seed,
                             batch_size=min(batch_size, len(texts)), shard=self.shard,
                             add_bos=add_bos)
    return [{"prompt": p, "response": r, "finished": f} for p, (r, f) in zip(prompts, results)]

  def score(self, prompts: Sequence[Prompt], responses: Sequence[str], *, add_eos: bool = True,
            add_bos: bool = False, chat: bool = False, batch_size: int = 32) -> list[float]:
    """Reward-model scores of (prompt, response) pairs, read at the last real token.

    Sequences are built as in training (instructjax.data.encode): [BOS] + prompt + response +
    EOS, prompt and response tokenized separately, so the score is read at EOS by default.
    Imported HF reward models whose pad_token_id equals their EOS were scored by transformers
    at the last token before trailing EOS; pass add_eos=False to reproduce that convention.
    """
    if self.head != "scalar":
      raise ValueError("score needs a scalar head (a reward model); this is a language model")
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    tok = self._need_tokenizer()
    rows, prompt_lens = [], []
    for p, r in zip(prompts, responses):
      prompt = tok.encode(self.render_prompt(p, chat), add_bos=add_bos)
      ids = prompt + tok.encode(r)
      rows.append(ids + [tok.eos_id] if add_eos else ids)
      prompt_lens.append(len(prompt))
    if self.config.score_logprob:  # The score needs where the response starts: segments.
      from instructjax.evaluation.scoring import last_token_scores
      return [float(v) for v in last_token_scores(self.model, self.params, rows,
                                                  pad_id=tok.pad_id, batch_size=batch_size,
                                                  prefix_lens=prompt_lens)]
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
      tokens, mask = self._batch(rows[start:start + batch_size])
      values = self.forward(tokens, mask)
      last = last_token_index(jnp.asarray(mask))
      scores.extend(float(v) for v in np.asarray(jnp.take_along_axis(values, last[:, None], 1)[:, 0]))
    return scores

  # --- saving

  def to_hf(self, path: str, *, score_bias: str = "store",
            max_shard_bytes: Optional[int] = None) -> str:
    """Exports a transformers-loadable directory (config, safetensors, tokenizer). A reward or
    value model's score bias, which HF's head cannot hold, goes into config.json as
    `instructjax_score_bias` (instructjax.hf.convert; score_bias="error" refuses instead)."""
    from instructjax.hf import export_hf
    export_hf(path, self.config, self.params, head=self.head, tokenizer=self.tokenizer,
              score_bias=score_bias, max_shard_bytes=max_shard_bytes)
    return path

  def save(self, path: str, meta: Optional[dict] = None) -> str:
    """Writes an instructjax model directory (orbax params + model_config.json + tokenizer/)."""
    from instructjax.model_io import save_model
    if self.tokenizer is None:
      raise ValueError("an instructjax model directory needs a tokenizer")
    return save_model(path, self.params, self.config, self.tokenizer, head=self.head, meta=meta)


def from_hf(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
            ignore_auto_map: bool = False) -> LM:
  """Imports a local HF directory (gpt2 / llama / qwen2, causal LM or num_labels=1 classifier).

  Weights are read from safetensors only; the tokenizer (if the directory has one) gets a PAD
  when it lacks one (the embedding grows to cover it). See instructjax.hf for what is refused.
  """
  from instructjax.hf import import_hf
  imp = import_hf(path, dtype=dtype, param_dtype=param_dtype, ignore_auto_map=ignore_auto_map)
  return LM(imp.config, imp.params, imp.tokenizer, imp.head)


def load(path: str, *, step: Optional[int] = None) -> LM:
  """Loads a model directory of any supported kind.

    * instructjax model directory (model_config.json + params/ + tokenizer/), written by the
      stages and `LM.save`;
    * training checkpoint directory (model_config.json + tokenizer/ + <step>/state): the
      parameters of `step` (default the latest) are read from the train state;
    * Hugging Face directory (config.json + safetensors), e.g. one written by `LM.to_hf`.
  """
  from instructjax import model_io
  from instructjax.hf import is_hf_dir
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} is not a directory")
  if model_io.is_model_dir(path):
    params, cfg, tokenizer, head, _ = model_io.load_model(path)
    return LM(cfg, params, tokenizer, head)
  if os.path.isfile(os.path.join(path, model_io.MODEL_CONFIG_FILE)) and _checkpoint_steps(path):
    return _load_training_checkpoint(path, step)
  if is_hf_dir(path):
    return from_hf(path)
  raise FileNotFoundError(
      f"{path}: not an instructjax model directory (model_config.json + params/), a training "
      "checkpoint directory (model_config.json + <step>/) or an HF directory (config.json)")


def _checkpoint_steps(path: str) -> list[int]:
  return sorted(int(d) for d in os.listdir(path)
                if d.isdigit() and os.path.isdir(os.path.join(path, d, "state")))


def _load_training_checkpoint(path: str, step: Optional[int]) -> LM:
  """Params of a train state saved by instructjax.training.Checkpointer, onto one device."""
  import orbax.checkpoint as ocp
  from instructjax.training.checkpointing import load_checkpoint_tokenizer, read_model_config
  steps = _checkpoint_steps(path)
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"{path}: no checkpoint step {step}; available: {steps}")
  record = dict(read_model_config(path))
  head = record.pop("head", None)
  record.pop("meta", None)
  cfg = ModelConfig.from_dict(record, where=os.path.join(path, "model_config.json"))
  state_path = os.path.join(os.path.abspath(path), str(step), "state")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(state_path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, Mapping) or "params" not in tree:
      raise ValueError(f"{state_path}: the train state has no 'params' entry "
                       f"(top-level keys: {list(tree) if isinstance(tree, Mapping) else tree})")
    # Restore only the parameters (a partial restore): the optimizer state is never read.
    target = {"params": jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree["params"])}
    restored = ckptr.restore(state_path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  params = restored["params"]
  if head is None:
    head = "scalar" if "score_kernel" in params else "lm"
  return LM(cfg, params, load_checkpoint_tokenizer(path), head)

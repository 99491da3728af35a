"""The training loop every stage (pretrain, SFT, RM, PPO) runs.

A stage supplies a pure jitted `step_fn(state, batch, rng) -> (state, metrics)` that donates
`state`, an iterator of batches and optionally `eval_fn(state, step) -> metrics`; `run_loop` does
the rest: resume from the latest checkpoint, per-step rngs, host hooks, logging, eval,
checkpointing, non-finite-loss handling, progress bar.

Step numbering: step `s` (1-based) is the update that turns state `s - 1` into state `s`; it gets
`jax.random.fold_in(rng, s)` and consumes the `s`-th batch. A checkpoint at step `s` holds state
`s` and the iterator positioned after `s` batches, so resuming needs nothing but the step number
and reproduces an uninterrupted run exactly.

Syncs: the host never waits on the device except at log/eval/save steps (metrics transfer,
non-finite check) and inside hooks that ask for values.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
from tqdm import tqdm  # Not tqdm.auto: its notebook bar crashes without ipywidgets.

from instructjax.training import checkpointing
from instructjax.training import hooks as hooks_lib
from instructjax.training import interrupts
from instructjax.training import metrics_writer
from instructjax.training import nonfinite

PyTree = Any
StepFn = nonfinite.StepFn
EvalFn = Callable[[PyTree, int], Mapping[str, Any]]

CHECKPOINT_SUBDIR = "checkpoints"

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoopSummary:
  """How a `run_loop` call went.

  Attributes:
    start_step: step the call started from (0, or the resumed checkpoint's step).
    final_step: step of the returned state.
    resumed_from: the checkpoint step restored, or None for a fresh run.
    stop_reason: "num_steps", "data_exhausted" or "preempted" (a signal or the hosts'
      preemption sync point: the state was saved at final_step; see training/interrupts.py).
    skipped_updates: updates dropped for non-finite losses, over the whole run (resumes included).
    train_metrics: the last logged train metrics (host scalars).
    eval_metrics: the last eval metrics (host scalars).
    checkpoint_steps: steps present in the checkpoint directory at the end.
    best_step: best checkpoint by `CheckpointConfig.best_metric` (else the latest).
    wall_time_s: seconds spent in this call.
  """
  start_step: int
  final_step: int
  resumed_from: int | None
  stop_reason: str
  skipped_updates: int
  train_metrics: dict[str, Any]
  eval_metrics: dict[str, Any]
  checkpoint_steps: list[int]
  best_step: int | None
  wall_time_s: float


def checkpoint_dir(workdir: str) -> str:
  """Where `run_loop` keeps checkpoints (and the model config / tokenizer) for `workdir`."""
  # Absolute: orbax refuses relative checkpoint paths (a user's `--workdir=runs/x`).
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def _is_abstract(tree: PyTree) -> bool:
  leaves = jax.tree.leaves(tree)
  return bool(leaves) and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def _host_scalars(extra: Mapping[str, Any]) -> dict[str, Any]:
  return {f"host/{k}": v for k, v in extra.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_loop(
    step_fn: StepFn,
    state: PyTree,
    data_iter: Iterator[Any],
    rng: jax.Array | None,
    *,
    num_steps: int,
    workdir: str,
    log_every: int = 50,
    eval_every: int = 0,
    eval_fn: EvalFn | None = None,
    save_every: int = 0,
    checkpoint: checkpointing.CheckpointConfig | None = checkpointing.CheckpointConfig(),
    hooks: Sequence[hooks_lib.Hook | Callable[[int, Mapping[str, Any]], Any]] = (),
    extra_state: Mapping[str, Any] | None = None,
    on_nonfinite: str = "raise",
    nonfinite_keys: Sequence[str] | None = None,
    model_config: Any = None,
    tokenizer: Any = None,
    resume: bool = True,
    progress: bool = True,
    progress_metrics: Sequence[str] | None = None,
) -> tuple[PyTree, LoopSummary]:
  """Trains until `num_steps` updates in total (resuming from `workdir` if it has checkpoints).

  Args:
    step_fn: pure `(state, batch, rng) -> (state, metrics)`, jitted with `state` donated.
      `metrics` is a flat dict of scalar arrays.
    state: the initial state, with the shardings the run should use. When resuming, the
      checkpoint is restored onto these shardings (any mesh); the state may then also be
      abstract (`jax.ShapeDtypeStruct`s with sharding, e.g. from `jax.eval_shape`) to skip init.
    data_iter: iterator of batches. With `get_state()`/`set_state()` its position is
      checkpointed and restored; without them a resumed run sees different data (warned).
    rng: base key (typed or raw); step `s` gets `fold_in(rng, s)`. Saved; a resume uses the
      saved one. None: `step_fn` gets None.
    num_steps: total updates of the run (not of this call).
    workdir: gets `metrics.jsonl`, `tensorboard/` and `checkpoints/`.
    log_every: log train metrics (and sync) every this many steps; 0: only at the end.
    eval_every: run `eval_fn(state, step)` every this many steps and at the end; 0: never.
    eval_fn: must not donate `state`. Its metrics are logged as split "eval" and, at save steps,
      handed to the checkpointer for keep-best.
    save_every: checkpoint every this many steps; a checkpoint is also written at the end.
    checkpoint: retention settings; None disables checkpointing (and resuming).
    hooks: `Hook`s or callables `(step, metrics) -> mapping | None` run after each step; a
      returned mapping updates the checkpointed host state (`extra_state`).
    extra_state: initial JSON-able host state (a resumed run uses the saved one).
    on_nonfinite: "raise": stop with `NonFiniteError("step 37: policy_loss is nan")`, checked
      at log/eval/save steps and before every checkpoint, naming the first bad step;
      "skip": wrap `step_fn` in `guard_nonfinite` so bad updates leave the state unchanged, and
      count them ("skipped_total" in train logs, `summary.skipped_updates`).
    nonfinite_keys: metrics to check; default those ending with "loss"; () checks none.
    model_config, tokenizer: written beside the checkpoints (`write_checkpoint_assets`).
    resume: restore the latest checkpoint of `workdir` if there is one.
    progress: show a tqdm bar on host 0.
    progress_metrics: train metrics in the bar's postfix; default: the checked losses (<= 3).

  Returns:
    (final state, LoopSummary).
  """
  if on_nonfinite not in ("raise", "skip"):
    raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
  if eval_every and eval_fn is None:
    raise ValueError("eval_every is set but eval_fn is None")
  for name, value in (("num_steps", num_steps), ("log_every", log_every),
                      ("eval_every", eval_every), ("save_every", save_every)):
    if value < 0:
      raise ValueError(f"{name} must be >= 0, got {value}")
  workdir = os.path.abspath(workdir)
  t_start = time.time()
  is_host0 = jax.process_index() == 0
  hook_list = [hooks_lib.as_hook(h) for h in hooks]
  names = [h.name for h in hook_list if h.name]
  if len(names) != len(set(names)):
    raise ValueError(f"hook names must be unique (their states share a checkpoint): {names}")
  can_save_iter = hasattr(data_iter, "get_state") and hasattr(data_iter, "set_state")

  # --- checkpoints and resume
  ckpt = None
  if checkpoint is not None:
    ckpt = checkpointing.Checkpointer(checkpoint_dir(workdir), checkpoint)
  if model_config is not None or tokenizer is not None:
    checkpointing.write_checkpoint_assets(checkpoint_dir(workdir), model_config=model_config,
                                          tokenizer=tokenizer)
  start_step, resumed_from = 0, None
  extra = dict(extra_state or {})
  skipped_before = 0
  latest = ckpt.latest_step() if (ckpt is not None and resume) else None
  if latest is not None:
    try:
      restored = ckpt.restore_intact(target=state,
                                     data_iter=data_iter if can_save_iter else None)
    except BaseException:
      ckpt.close()
      raise
    latest = restored.step
    if restored.data_iter_state is not None and not can_save_iter:
      _log.warning("checkpoint %d has a data iterator state but the iterator has no set_state(); "
                   "the resumed run will not see the same batches", latest)
    state, start_step, resumed_from = restored.state, latest, latest
    if restored.rng is not None:
      rng = restored.rng
    host = restored.host
    extra = dict(host.get("extra", extra))
    skipped_before = int(host.get("loop", {}).get("skipped_updates", 0))
    for h in hook_list:
      if h.name and h.name in host.get("hooks", {}):
        h.set_state(host["hooks"][h.name])
    _log.info("resumed from checkpoint step %d in %s", latest, checkpoint_dir(workdir))
  elif _is_abstract(state):
    raise ValueError(f"state is abstract (ShapeDtypeStructs) but {workdir} has no checkpoint "
                     "to restore it from; pass initialized arrays")
  if not can_save_iter and ckpt is not None:
    _log.warning("data iterator has no get_state()/set_state(); its position is not "
                 "checkpointed")

  if on_nonfinite == "skip" and not nonfinite.is_guarded(step_fn):
    step_fn = nonfinite.guard_nonfinite(step_fn, nonfinite_keys)
  tracker = nonfinite.NonfiniteTracker(nonfinite_keys, skipped_total=skipped_before)

  writer = metrics_writer.MetricsWriter(
      workdir, purge_step=None if resumed_from is None else resumed_from + 1)
  ctx = hooks_lib.LoopContext(workdir=workdir, num_steps=num_steps, start_step=start_step,
                              log_every=log_every, extra=extra, state=state, writer=writer)
  pbar = tqdm(total=num_steps, initial=start_step, disable=not (progress and is_host0),
              dynamic_ncols=True, desc=os.path.basename(os.path.normpath(workdir)))

  step = start_step
  metrics: Mapping[str, Any] | None = None
  last_train: dict[str, Any] = {}
  last_eval: dict[str, Any] = {}
  done = {"log": -1, "eval": -1, "save": start_step if resumed_from is not None else -1}
  clock = {"time": time.time(), "step": start_step}
  stop_reason = "num_steps"

  def check_finite() -> int:
    """Syncs the tracker; raises in "raise" mode; returns the skipped-updates total."""
    if on_nonfinite == "raise":
      tracker.raise_if_nonfinite()
    return tracker.skipped_total()

  def log_train() -> None:
    nonlocal last_train
    skipped = check_finite()
    host_metrics = jax.device_get(dict(metrics))
    now = time.time()
    rate = (step - clock["step"]) / max(now - clock["time"], 1e-9)
    clock.update(time=now, step=step)
    record = {**host_metrics, "steps_per_sec": rate, **_host_scalars(extra)}
    if on_nonfinite == "skip":
      record["skipped_total"] = skipped
    last_train = metrics_writer.scalarize(record)
    writer.write(step, last_train, "train")
    keys = progress_metrics if progress_metrics is not None else (tracker.keys or ())[:3]
    pbar.set_postfix({k: f"{last_train[k]:.4g}" for k in keys if k in last_train}, refresh=False)
    done["log"] = step

  def run_eval() -> None:
    nonlocal last_eval
    check_finite()  # Evaluating a NaN state is wasted time; fail first.
    last_eval = metrics_writer.scalarize(eval_fn(state, step))
    writer.write(step, last_eval, "eval")
    writer.flush()
    done["eval"] = step

  def save() -> None:
    skipped = check_finite()  # Never checkpoint a state that the non-finite check rejects.
    host = {"extra": extra,
            "hooks": {h.name: h.get_state() for h in hook_list if h.name},
            "loop": {"skipped_updates": skipped}}
    ckpt.save(step, state,
              data_iter_state=data_iter.get_state() if can_save_iter else None,
              rng=rng, host=host,
              metrics=last_eval if done["eval"] == step else None)
    writer.flush()
    done["save"] = step

  try:
    with interrupts.in_loop():
      for h in hook_list:
        h.on_start(ctx)
      while step < num_steps:
        try:
          batch = next(data_iter)
        except StopIteration:
          stop_reason = "data_exhausted"
          _log.warning("data iterator exhausted after step %d of %d", step, num_steps)
          break
        step += 1
        for h in hook_list:
          batch = h.before_step(step, batch, ctx)
        step_rng = None if rng is None else jax.random.fold_in(rng, step)
        state, metrics = step_fn(state, batch, step_rng)
        ctx.state = state
        tracker.update(step, metrics)
        for h in hook_list:
          update = h.after_step(step, metrics, ctx)
          if update:
            extra.update(update)
        pbar.update(1)

        # A signal to this process (SIGTERM/SIGINT), or the hosts' preemption sync point.
        preempted = interrupts.stop_requested() or (
            ckpt is not None and ckpt.reached_preemption(step))
        if log_every and step % log_every == 0:
          log_train()
        if eval_every and step % eval_every == 0 and not preempted:
          run_eval()
        if ckpt is not None and ((save_every and step % save_every == 0) or preempted):
          save()
        if preempted:
          stop_reason = "preempted"
          interrupts.take_request()
          _log.warning("told to stop: saved step %d, stopping", step)
          break

      for h in hook_list:
        h.on_end(ctx)
      # Final boundary: whatever the periodic schedule did not already do at this step.
      if step > start_step:
        if done["log"] != step:
          log_train()
        if (eval_fn is not None and eval_every and done["eval"] != step
            and stop_reason != "preempted"):
          run_eval()
      if ckpt is not None and done["save"] != step and step > 0:
        save()
      skipped_total = check_finite()
      ckpt_steps, best_step = [], None
      if ckpt is not None:
        ckpt.wait_until_finished()  # Old steps are deleted on commit: list them afterwards.
        ckpt_steps, best_step = ckpt.all_steps(), ckpt.best_step()
      if interrupts.stop_requested():  # Told to stop during the final save: saved, so stop.
        stop_reason = "preempted"
        interrupts.take_request()
  finally:
    pbar.close()
    writer.close()
    if ckpt is not None:
      ckpt.close()  # Also on errors: lets an in-flight async save commit.

  summary = LoopSummary(
      start_step=start_step, final_step=step, resumed_from=resumed_from,
      stop_reason=stop_reason, skipped_updates=skipped_total, train_metrics=last_train,
      eval_metrics=last_eval, checkpoint_steps=ckpt_steps, best_step=best_step,
      wall_time_s=time.time() - t_start)
  return state, summary

"""Static checks on compiled executables: donation, copies, host round-trips, memory.

They read what XLA produced (`compiled.memory_analysis()`, `compiled.as_text()`), so they hold
for the program that actually runs, on any backend.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import jax
import numpy as np

_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
             "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# `%name = f32[4,128]{1,0} copy(...)` (also copy-start); the first array shape of the result.
_COPY = re.compile(r"=\s*\(?\s*(\w+)\[([\d,]*)\][^=]*?\s(copy(?:-start)?)\(")
# Operations that move data between device and host inside a program.
_HOST_OPS = ("outfeed", "infeed", " send(", " recv(", "send-done", "recv-done",
             "callback", "host_compute", "HostCompute")


def tree_nbytes(tree: Any) -> int:
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)
                 if hasattr(x, "shape")))


def memory_analysis(compiled) -> Optional[dict]:
  """Argument, output, alias (donated and reused) and temporary bytes of an executable."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
    return None
  if m is None:
    return None
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
          "temp_size_in_bytes", "generated_code_size_in_bytes")
  return {k.replace("_size_in_bytes", "_bytes"): int(getattr(m, k, 0) or 0) for k in keys}


def donation(compiled, donated_tree: Any) -> dict:
  """How much of the donated argument XLA aliased to an output (1.0: all of it reused)."""
  state_bytes = tree_nbytes(donated_tree)
  m = memory_analysis(compiled) or {}
  alias = m.get("alias_bytes")
  return {"donated_bytes": state_bytes, "aliased_bytes": alias,
          "aliased_fraction": (alias / state_bytes) if alias is not None and state_bytes else None}


def copies(compiled, top: int = 3, watch: Any = None) -> dict:
  """Copy instructions in the optimised HLO: count, total bytes and the largest ones.

  With `watch` (a pytree of arrays, e.g. the donated state), also the copies whose shape is
  that of one of its leaves of >= 1024 elements ("state_shaped"): a copy of a weight or
  optimizer moment (a layout change of a parameter, or a buffer donation failed to reuse).
  Shapes are compared without their leading layers axis as well (a scanned layer's slice).
  """
  shapes = set()
  for x in jax.tree.leaves(watch) if watch is not None else ():
    if hasattr(x, "shape") and int(np.prod(x.shape)) >= 1024:
      shapes.add(tuple(x.shape))
      if len(x.shape) > 1:
        shapes.add(tuple(x.shape[1:]))
  found, watched = [], []
  for line in compiled.as_text().splitlines():
    m = _COPY.search(line)
    if not m:
      continue
    dtype, dims, op = m.groups()
    shape = tuple(int(d) for d in dims.split(",") if d)
    nbytes = int(np.prod(shape)) * _ITEMSIZE.get(dtype, 4)
    found.append((nbytes, f"{op} {dtype}[{','.join(map(str, shape))}]"))
    if shape in shapes:
      watched.append((nbytes, found[-1][1]))
  found.sort(reverse=True)
  watched.sort(reverse=True)
  out = {"count": len(found), "total_bytes": sum(b for b, _ in found),
         "largest": [{"bytes": b, "op": d} for b, d in found[:top]]}
  if watch is not None:
    out["state_shaped"] = {"count": len(watched), "total_bytes": sum(b for b, _ in watched),
                           "largest": [{"bytes": b, "op": d} for b, d in watched[:top]]}
  return out


# Instructions that produce no new buffer (views, plumbing).
_NO_BUFFER = ("parameter", "get-tuple-element", "tuple", "bitcast", "while", "conditional",
              "call", "constant", "after-all", "opt-barrier")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?(%[\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\][^=]*?\s([\w\-]+)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?(%[\w.\-]+)\s.*\{\s*$")
_ROOT = re.compile(r"^\s*ROOT\s+%[\w.\-]+\s*=\s*[^=]*?\s([\w\-]+)\(")


def cache_buffers(compiled, cache_shape) -> dict:
  """New buffers shaped like the KV cache [L, B, Hkv, S, Dh] or one layer of it, outside fused
  computations, in the optimised HLO of a decode program.

  An in-place write (a fusion whose root is a dynamic-update-slice) reuses the cache's buffer
  and is not counted. "whole" counts full-cache buffers (copies of the cache: none expected);
  "layer" counts materialised [B, Hkv, S, Dh] layer slices (a matmul operand read out of the
  stacked cache; XLA fuses the slice into the consumer on TPU).
  """
  text = compiled.as_text()
  called = set(re.findall(r"calls=(%[\w.\-]+)", text))
  roots, current = {}, None
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = m.group(1)
    r = _ROOT.match(line)
    if r and current:
      roots[current] = r.group(1)
  whole, layer = tuple(cache_shape), tuple(cache_shape[1:])
  out = {"whole": 0, "layer": 0, "bytes": 0, "ops": []}
  current = None
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = m.group(1)
      continue
    if current in called:
      continue  # Inside a fusion (or a called computation): no buffer of its own.
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    _, dtype, dims, op = m.groups()
    shape = tuple(int(d) for d in dims.split(",") if d)
    if shape not in (whole, layer) or op in _NO_BUFFER:
      continue
    fused = re.search(r"calls=(%[\w.\-]+)", line)
    if op == "fusion" and fused and roots.get(fused.group(1)) == "dynamic-update-slice":
      continue  # In place.
    out["whole" if shape == whole else "layer"] += 1
    out["bytes"] += int(np.prod(shape)) * _ITEMSIZE.get(dtype, 4)
    out["ops"].append(f"{op} {dtype}[{dims}]")
  out["ops"] = out["ops"][:6]
  return out


def host_transfers(compiled) -> list[str]:
  """HLO lines that move data to or from the host inside the program (should be none)."""
  hits = []
  for line in compiled.as_text().splitlines():
    if any(op in line for op in _HOST_OPS):
      hits.append(line.strip()[:160])
  return hits


def has_while_loop(compiled) -> bool:
  return " while(" in compiled.as_text()


__all__ = ["cache_buffers", "copies", "donation", "has_while_loop", "host_transfers", "memory_analysis",
           "tree_nbytes"]

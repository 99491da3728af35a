"""Create, set up, launch on, watch, stop and delete a TPU VM slice (gcloud under the hood).

  python experiments/tpu/tpu_vm.py create --name=ij --zone=us-central2-b --slice=v4-32 [--spot]
  python experiments/tpu/tpu_vm.py setup  --name=ij --zone=us-central2-b
  python experiments/tpu/tpu_vm.py launch --name=ij --zone=us-central2-b --slice=v4-32 \
      --run=sft --config=configs/sft.py:gpt2-124m --workdir=/mnt/shared/runs/sft \
      --set init_from=/mnt/shared/runs/pretrain/model --set train.num_steps=2000
  python experiments/tpu/tpu_vm.py watch  --name=ij --zone=us-central2-b --run=sft
  python experiments/tpu/tpu_vm.py status --name=ij --zone=us-central2-b --run=sft
  python experiments/tpu/tpu_vm.py stop   --name=ij --zone=us-central2-b --run=sft
  python experiments/tpu/tpu_vm.py delete --name=ij --zone=us-central2-b

--dry_run prints the commands (one per line, shell-quoted) instead of running them. Slices and
their meshes: instructjax/mesh_presets.py; the commands: experiments/tpu/tpu_commands.py.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # Its sibling tpu_commands.
import tpu_commands as tc  # pylint: disable=g-import-not-at-top,wrong-import-position

from instructjax.parallel.slices import SLICES, get_slice  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_set(items: Sequence[str]) -> dict[str, str]:
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--set {item!r}: expected key=value")
    out[key] = value
  return out


def build(args: argparse.Namespace) -> list[list[str]]:
  """The command lines of the subcommand `args.cmd`."""
  t = tc.Target(args.name, args.zone, args.project)
  if args.cmd == "create":
    return [tc.create_command(t, get_slice(args.slice), spot=args.spot,
                              runtime_version=args.runtime_version)]
  if args.cmd == "setup":
    return tc.setup_commands(t, REPO, extras=args.extras)
  if args.cmd == "launch":
    return [tc.launch_command(t, args.run, args.config, args.workdir, get_slice(args.slice),
                              parse_set(args.set))]
  if args.cmd == "watch":
    return [tc.watch_command(t, args.run, lines=args.lines, follow=not args.no_follow,
                             worker=args.worker)]
  if args.cmd == "status":
    return tc.status_commands(t, args.run)
  if args.cmd == "stop":
    return [tc.stop_command(t, args.run)]
  if args.cmd == "delete":
    return [tc.delete_command(t)]
  raise SystemExit(f"unknown command {args.cmd!r}")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  for name in ("create", "setup", "launch", "watch", "status", "stop", "delete"):
    s = sub.add_parser(name)
    s.add_argument("--name", required=True, help="TPU VM name")
    s.add_argument("--zone", required=True)
    s.add_argument("--project", default=None)
    s.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    if name in ("create", "launch"):
      s.add_argument("--slice", required=True, choices=sorted(SLICES))
    if name in ("launch", "watch", "status", "stop"):
      s.add_argument("--run", required=True, help="run name: ~/logs/<run>.log on each worker")
  sub.choices["create"].add_argument("--spot", action="store_true")
  sub.choices["create"].add_argument("--runtime_version", default=None)
  sub.choices["setup"].add_argument("--extras", default="", help="setup.py extras, e.g. tfds")
  launch = sub.choices["launch"]
  launch.add_argument("--config", required=True, help="stage config file[:arg]")
  launch.add_argument("--workdir", required=True, help="absolute path on a shared mount")
  launch.add_argument("--set", action="append", default=[], help="config key=value")
  watch = sub.choices["watch"]
  watch.add_argument("--lines", type=int, default=50)
  watch.add_argument("--no_follow", action="store_true")
  watch.add_argument("--worker", default="0")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parser().parse_args(argv)
  try:
    commands = build(args)
  except ValueError as e:  # A refused workdir, an unknown slice: no command runs.
    print(f"error: {e}", file=sys.stderr)
    return 2
  for cmd in commands:
    if args.dry_run:
      print(shlex.join(cmd))
      continue
    rc = subprocess.call(cmd)
    if rc:
      return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())

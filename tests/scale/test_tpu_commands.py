"""TPU VM scripts: the exact gcloud command lines, built and printed (--dry_run), never run."""
import importlib.util
import os
import shlex
import sys

import pytest

from instructjax.parallel.slices import get_slice

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "experiments", "tpu", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up while the class is built.
  spec.loader.exec_module(module)
  return module


tc = load("tpu_commands")
T = tc.Target("ij", "us-central2-b", "proj")
TPU = "gcloud compute tpus tpu-vm".split()
WHERE = ["--zone=us-central2-b", "--project=proj"]


def test_create_and_delete():
  assert tc.create_command(T, get_slice("v5e-16"), spot=True) == [
      *TPU, "create", "ij", *WHERE, "--accelerator-type=v5litepod-16",
      "--version=v2-alpha-tpuv5-lite", "--spot"]
  assert tc.create_command(tc.Target("a", "z"), get_slice("v4-8")) == [
      *TPU, "create", "a", "--zone=z", "--accelerator-type=v4-8",
      "--version=tpu-ubuntu2204-base"]
  assert tc.create_command(T, get_slice("v5p-128"))[6:9] == [
      *WHERE, "--accelerator-type=v5p-128"]
  assert tc.delete_command(T) == [*TPU, "delete", "ij", *WHERE, "--quiet"]


def test_setup_ships_the_committed_tree_to_every_worker():
  archive, scp, ssh = tc.setup_commands(T, "/src/ij")
  assert archive == ["git", "-C", "/src/ij", "archive", "--format=tar.gz",
                     "--output=/tmp/instructjax.tar.gz", "HEAD"]
  assert scp == [*TPU, "scp", "/tmp/instructjax.tar.gz", "ij:~/instructjax.tar.gz", *WHERE,
                 "--worker=all"]
  assert ssh[:9] == [*TPU, "ssh", "ij", *WHERE, "--worker=all"] and len(ssh) == 10
  assert ssh[9] == ("--command=mkdir -p ~/instructjax && tar -xzf ~/instructjax.tar.gz -C "
                    "~/instructjax && cd ~/instructjax && python3 -m pip install -q -U pip && "
                    "python3 -m pip install -q -e . 'jax[tpu]'")


def test_launch_runs_train_py_on_every_worker_with_the_slice_mesh():
  cmd = tc.launch_command(T, "sft", "configs/sft.py:gpt2-124m", "/mnt/shared/runs/sft",
                          get_slice("v4-32"), {"init_from": "/mnt/shared/pre/model"})
  assert cmd[:9] == [*TPU, "ssh", "ij", *WHERE, "--worker=all"] and len(cmd) == 10
  assert cmd[9] == (
      "--command=mkdir -p ~/logs && cd ~/instructjax && (setsid nohup python3 "
      "experiments/train.py --config=configs/sft.py:gpt2-124m --workdir=/mnt/shared/runs/sft "
      "--distributed.mode=auto --config.mesh.data=1 --config.mesh.fsdp=16 "
      "--config.mesh.tensor=1 --config.mesh.rules=fsdp --config.init_from=/mnt/shared/pre/model"
      " > ~/logs/sft.log 2>&1 < /dev/null & echo $! > ~/logs/sft.pid)")
  # A value with spaces stays one argument on the remote shell.
  quoted = tc.launch_command(T, "r", "c.py", "/mnt/w", get_slice("v5e-16"),
                             {"data.train_path": "/mnt/a b.jsonl"})[9]
  assert "'--config.data.train_path=/mnt/a b.jsonl'" in quoted
  assert "--config.mesh.tensor=2 --config.mesh.rules=fsdp_tp" in quoted


@pytest.mark.parametrize("workdir,match", [("gs://bucket/run", "POSIX"),
                                           ("runs/sft", "shared mount"),
                                           ("~/runs/sft", "shared mount")])
def test_launch_refuses_workdirs_the_hosts_cannot_share(workdir, match):
  with pytest.raises(ValueError, match=match):
    tc.launch_command(T, "r", "c.py", workdir, get_slice("v4-32"))
  if match == "shared mount":  # One host: its local disk is fine.
    tc.launch_command(T, "r", "c.py", workdir, get_slice("v4-8"))


def test_watch_status_stop():
  assert tc.watch_command(T, "sft") == [*TPU, "ssh", "ij", *WHERE, "--worker=0",
                                        "--command=tail -n 50 -F ~/logs/sft.log"]
  assert tc.watch_command(T, "sft", lines=5, follow=False, worker="all")[-2:] == [
      "--worker=all", "--command=tail -n 5 ~/logs/sft.log"]
  describe, alive = tc.status_commands(T, "sft")
  assert describe == [*TPU, "describe", "ij", *WHERE, "--format=table(name.basename(),state,"
                      "health,acceleratorType,runtimeVersion)"]
  assert alive[:8] == [*TPU, "ssh", "ij", *WHERE]
  assert alive[8:] == ["--worker=all", "--command=if kill -0 $(cat ~/logs/sft.pid 2>/dev/null) "
                       "2>/dev/null; then echo \"$(hostname): running\"; else echo "
                       "\"$(hostname): not running\"; fi; tail -n 2 ~/logs/sft.log 2>/dev/null"
                       " || true"]
  assert tc.stop_command(T, "sft")[-1] == ("--command=if [ -f ~/logs/sft.pid ]; then kill "
                                           "$(cat ~/logs/sft.pid) 2>/dev/null || true; fi")


def test_cli_dry_run_prints_and_runs_nothing(capsys, monkeypatch):
  cli = load("tpu_vm")
  monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: pytest.fail("ran a command"))
  assert cli.main(["create", "--name=ij", "--zone=us-central2-b", "--project=proj",
                   "--slice=v5e-16", "--spot", "--dry_run"]) == 0
  assert cli.main(["status", "--name=ij", "--zone=us-central2-b", "--project=proj",
                   "--run=sft", "--dry_run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [shlex.split(l) for l in lines] == [
      tc.create_command(T, get_slice("v5e-16"), spot=True), *tc.status_commands(T, "sft")]
  assert cli.main(["launch", "--name=ij", "--zone=z", "--slice=v4-32", "--run=r",
                   "--config=c.py", "--workdir=runs/x", "--dry_run"]) == 2
  assert "shared mount" in capsys.readouterr().err

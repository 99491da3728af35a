"""Where the distributed coordinates come from: config section, INSTRUCTJAX_* env, JAX detection."""
import os
import subprocess
import sys

import pytest

from instructjax.parallel import distributed
from instructjax.config import ConfigError

ENV = {"INSTRUCTJAX_COORDINATOR": "10.0.0.2:1234", "INSTRUCTJAX_NUM_PROCESSES": "4",
       "INSTRUCTJAX_PROCESS_ID": "3"}


def section(**kw):
  return distributed.config_section(**kw)


def test_single_process_by_default():
  assert distributed.resolve(None, environ={}) is None
  assert distributed.resolve(section(), environ={}) is None


def test_config_section_wins_over_environment():
  spec = distributed.resolve(section(coordinator_address="127.0.0.1:99", num_processes=2,
                                     process_id=1), environ=ENV)
  assert (spec.coordinator_address, spec.num_processes, spec.process_id, spec.source) == (
      "127.0.0.1:99", 2, 1, "config")
  assert spec.cpu_collectives == "gloo"


def test_environment():
  spec = distributed.resolve(None, environ=ENV)
  assert (spec.coordinator_address, spec.num_processes, spec.process_id, spec.source) == (
      "10.0.0.2:1234", 4, 3, "env")


def test_auto_falls_back_to_jax_detection_and_off_disables():
  spec = distributed.resolve(section(mode="auto"), environ={})
  assert spec.source == "jax" and spec.coordinator_address is None
  assert distributed.resolve(section(mode="auto"), environ=ENV).source == "env"
  assert distributed.resolve(section(mode="off"), environ=ENV) is None


@pytest.mark.parametrize("kw,env,match", [
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, "process_id"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), {}, "num_processes"),
    (dict(mode="sometimes"), {}, "mode"),
    (dict(cpu_collectives="nccl"), {}, "cpu_collectives"),
    ({}, {"INSTRUCTJAX_COORDINATOR": "h:1", "INSTRUCTJAX_NUM_PROCESSES": "2"},
     "INSTRUCTJAX_PROCESS_ID"),
    ({}, {**ENV, "INSTRUCTJAX_NUM_PROCESSES": "two"}, "INSTRUCTJAX_NUM_PROCESSES"),
])
def test_bad_coordinates_name_their_source(kw, env, match):
  with pytest.raises(ConfigError, match=match):
    distributed.resolve(section(**kw), environ=env)


def test_merge_sections_later_non_defaults_win():
  stage = section(coordinator_address="a:1", num_processes=2, process_id=0)
  flags = section(process_id=1)
  merged = distributed.merge_sections(stage, flags)
  assert (merged.coordinator_address, merged.num_processes, merged.process_id) == ("a:1", 2, 1)
  with pytest.raises(ConfigError, match="unknown key"):
    distributed.merge_sections({"coordinator": "a:1"})


def test_single_process_initialize_is_a_no_op_and_host_batch_is_global():
  assert distributed.initialize(section(), environ={}) is None
  assert distributed.host_batch_size(8) == 8  # One process holds the whole global batch.


def test_auto_without_a_cluster_is_a_single_process_run():
  # A fresh interpreter: initialize must come before JAX's backend starts, which in this test
  # session it already has.
  code = ("import jax; from instructjax.parallel import distributed; "
          "spec = distributed.initialize(distributed.config_section(mode='auto'), environ={}); "
          "print(spec, jax.distributed.is_initialized(), jax.process_count())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True).stdout
  assert out.split() == ["None", "False", "1"]

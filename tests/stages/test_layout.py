"""The stage packages' boundary: outside `stages/<stage>/`, code imports only the stage's package
(its public API in `__init__`), never its modules; no module-level cache of jitted closures."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "instructjax")
STAGES = ("lm", "rm", "ppo")


def python_files(*dirs):
  for d in dirs:
    for base, _, files in os.walk(os.path.join(ROOT, d)):
      for f in files:
        if f.endswith(".py"):
          yield os.path.join(base, f)


def imported_modules(path):
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      yield node.lineno, node.module, [a.name for a in node.names]
    elif isinstance(node, ast.Import):
      for a in node.names:
        yield node.lineno, a.name, []


@pytest.mark.parametrize("stage", STAGES)
def test_no_code_outside_a_stage_imports_its_modules(stage):
  inside = os.path.join(PACKAGE, "stages", stage) + os.sep
  prefix = f"instructjax.stages.{stage}."
  offenders = []
  for path in python_files("instructjax", "experiments"):
    if path.startswith(inside):
      continue
    for line, module, names in imported_modules(path):
      submodule_names = [n for n in names if module == f"instructjax.stages.{stage}"
                         and os.path.exists(os.path.join(inside, n + ".py"))]
      if module.startswith(prefix) or submodule_names:
        offenders.append(f"{os.path.relpath(path, ROOT)}:{line}: {module} {names}")
  assert not offenders, "\n".join(offenders)


def test_no_module_level_cache_of_jitted_functions():
  offenders = []
  for path in python_files("instructjax"):
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.FunctionDef):
        for dec in node.decorator_list:
          text = ast.unparse(dec)
          if "lru_cache" in text or text.endswith("cache"):
            returned = [ast.unparse(r.value) for r in ast.walk(node)
                        if isinstance(r, ast.Return) and r.value is not None]
            if any("jit" in r for r in returned):  # A memoised factory of compiled functions.
              offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {node.name}")
  assert not offenders, "\n".join(offenders)


# The gold judge (correctness, exact match, hallucination) is for evaluation only: the modules
# that train, sample training data or select models never import it. The labeler simulation
# (world.labelers, world.comparisons) ranks responses by their utility with noise, as real
# labelers would; training reads only its rankings.
GOLD_MODULES = ("instructjax.world.correctness", "instructjax.world.hallucination")
EVALUATION_ONLY = ("evaluate.py", "checks.py")  # Held-out evaluation; config checks (names).


def test_training_never_imports_the_gold_judge():
  offenders = []
  training = [p for p in python_files("instructjax/stages", "instructjax/training",
                                      "instructjax/data")
              if os.path.basename(p) not in EVALUATION_ONLY]
  training += [os.path.join(PACKAGE, "recipe", "run.py")]
  for path in training:
    for line, module, names in imported_modules(path):
      gold = [m for m in GOLD_MODULES
              if module == m or (module == "instructjax.world"
                                 and m.rsplit(".", 1)[1] in names)]
      if gold:
        offenders.append(f"{os.path.relpath(path, ROOT)}:{line} imports {gold[0]}")
  assert not offenders, offenders

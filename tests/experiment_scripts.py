"""experiments/<name>.py imported as a module, once per test process: a script that defines
absl flags at import can define them only once, and several test files call into one."""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
  key = f"experiments_{name}_script"
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        key, os.path.join(REPO, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[key] = module
  return sys.modules[key]

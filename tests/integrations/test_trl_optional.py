"""TRL stays optional: no prefdyn module but ``prefdyn.integrations.trl`` may import it."""

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import prefdyn
assert "trl" not in sys.modules, "import prefdyn imported trl"
skipped = "prefdyn.integrations.trl"
for info in pkgutil.walk_packages(prefdyn.__path__, "prefdyn."):
    if info.name == skipped or info.name.startswith(skipped + ".") or info.name == "prefdyn.__main__":
        continue  # (__main__ runs the CLI)
    importlib.import_module(info.name)
    assert "trl" not in sys.modules, f"{info.name} imported trl"
print("ok", len(sys.modules))
"""


def test_no_prefdyn_module_outside_the_trl_integration_imports_trl():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")

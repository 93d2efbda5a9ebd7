"""One benchmark side in its own process: its peak memory (max RSS) is its own.

The parent runs ``python -m <module> --worker <side> --result <file> ...``; the worker
writes a JSON dict with at least ``setup_s``, ``step_times`` (the first is the warm-up
step), ``peak_gb`` and ``losses``, which comes back here with ``wall_s`` added.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_worker(module: str, side: str, args: list[str], *,
               env: dict[str, str] | None = None) -> dict | None:
    """The side's result, or None (its output's tail printed) when it failed."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    cmd = [sys.executable, "-m", module, "--worker", side, "--result", result_path, *args]
    # USE_HUB_KERNELS=NO: every side runs the model's own layers. Otherwise a library's own
    # from_pretrained (TRL's pi_ref) swaps in the hub's kernels on a GPU (transformers 5).
    full_env = dict(os.environ, TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error",
                    USE_HUB_KERNELS="NO", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT),
                                                           full_env.get("PYTHONPATH")]))
    print(f"[{time.strftime('%H:%M:%S')}] {side} ...", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        print(f"    {side} FAILED (exit {proc.returncode}); left out of the table", flush=True)
        return None
    result = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    result["wall_s"] = time.perf_counter() - start
    steps = result["step_times"][1:]
    print(f"    {side}: setup {result['setup_s']:.1f} s, warm-up {result['step_times'][0]:.1f} s, "
          f"{statistics.fmean(steps):.2f} s/step, peak {result['peak_gb']:.2f} GB, "
          f"losses {[round(x, 5) for x in result['losses']]}", flush=True)
    return result

"""Seeds, devices and the environment record written next to every run."""

from __future__ import annotations

import os
import platform
import random
from importlib import metadata

import numpy as np
import torch

from prefdyn.errors import PrefdynError

_RECORDED_PACKAGES = (
    "prefdyn", "torch", "transformers", "gguf", "safetensors", "accelerate",
    "peft", "numpy", "scipy", "matplotlib", "typer", "rich",
)


def is_main_process() -> bool:
    """True on rank 0 of a run started by a launcher (``accelerate launch``, torchrun: they
    set ``RANK``) and in a plain run: the one process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch once, at the entry point."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else must be available."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise PrefdynError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PrefdynError(f"device {device!r} asked for, but CUDA is not available")
    return torch.device(device)


def environment_record(device: torch.device | str | None = None) -> dict:
    """Package versions, python, platform and device, for reproducibility."""
    versions = {}
    for name in _RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device is not None else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions,
    }

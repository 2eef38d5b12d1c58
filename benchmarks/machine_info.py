"""The machine description every speed benchmark writes beside its numbers."""

from __future__ import annotations

import importlib
import os
import platform


def machine(device: str, packages: tuple[str, ...] = ("torch", "transformers", "vllm")) -> dict:
    """Platform, CPUs, threads, load at start, the device, and the versions of `packages` (None when absent)."""
    import torch

    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            versions[name] = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **versions,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "load_average_at_start": list(os.getloadavg()),
    }

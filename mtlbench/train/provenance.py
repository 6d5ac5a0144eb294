"""Provenance of a run: versions, code state, machine, and peak-memory measurement."""

from __future__ import annotations

import os
import platform
import socket
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import mtlbench
from mtlbench.core.code_state import git_state

PACKAGES = ("torch", "torchvision", "timm", "numpy", "datasets", "scipy", "submitit")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(root: Path, device: torch.device, outputs: Path | None = None, git: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, code state and machine; ``git``: the code state when the caller knows it (the
    runner's, taken when it planned the grid), else read now."""
    info: dict[str, Any] = {
        "mtlbench": mtlbench.__version__,
        "git": git if git is not None else git_state(root, outputs),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "packages": {p: _version(p) for p in PACKAGES},
        "timm": _version("timm"),
        "numpy": _version("numpy"),
        "datasets": _version("datasets"),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "cpu_count": os.cpu_count(),
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            {
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                "device_memory_mb": props.total_memory / 2**20,
                "device_capability": f"{props.major}.{props.minor}",
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            }
        )
    return info


class PeakMemory:
    """Peak memory of the current cell: CUDA max allocated on GPU; on CPU the process's peak
    resident set size (VmHWM), reset at the start of the cell where Linux allows it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset_ok = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.reset_ok = True
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False

    def peak_mb(self) -> tuple[float | None, str]:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_allocated"
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kind = "rss_peak" if self.reset_ok else "rss_peak_process"
                    return int(line.split()[1]) / 1024, kind
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_peak_process"

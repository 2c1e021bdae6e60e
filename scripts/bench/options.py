"""Sections, targets and the options every section reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .workloads import Workload, run_overrides

#: The checkout this package sits in.
REPO = Path(__file__).resolve().parents[2]

SECTIONS = ("ratio", "trainer", "memory", "hot_path", "ddp", "fsdp", "data", "compile")
TARGETS = {
    "sam_over_base": 2.03,  # at most
    "trainer_efficiency": 0.98,  # at least
    "sam_extra_memory_over_params": 1.0,  # at most
    "sam_peak_extra_over_params": 1.0,  # at most: backup and temporaries of SAM's bookkeeping
    "host_reads_per_step": 0,  # exactly
    "sam_bookkeeping_share": 0.05,  # at most, of a ResNet-50 step at 32 px
    "ddp_gradient_reductions_per_step": 1,  # exactly, default mode
    "loader_over_training": 3.0,  # at least, every data set (digits at 0 workers)
}


@dataclass
class Options:
    device: torch.device
    warmup: int
    reps: int
    min_rep_s: float
    precision: str
    work: dict[str, Workload]
    selected: list[str]
    data_images: int
    ddp_steps: int
    compile_workloads: list[str]
    overrides: list[str]  # of every run (the device)
    cifar_root: str | None = None  # synthetic CIFAR-10, when a workload reads it

    def run_overrides(self, work: Workload, world_size: int = 1) -> list[str]:
        return run_overrides(work, self.overrides, self.cifar_root, world_size)

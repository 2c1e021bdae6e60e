"""The SAM paper's published numbers (``paper_results.yaml``) and which of them a run reproduces.

``describe(config)`` maps a run's resolved config to its setting (the paper's table and row, the
metric in the paper's unit) and the paper's SGD and SAM values for it, so scripts can set a
run's result beside the paper's without knowing the preset it came from.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RESULTS_FILE = Path(__file__).with_name("paper_results.yaml")
TABLE_TITLES = {
    "cifar": "Table 1, CIFAR: test error (%)",
    "imagenet": "Table 2, ImageNet: top-1 test error (%)",
    "label_noise": "Table 4, noisy CIFAR-10 labels: clean test accuracy (%)",
    "noisy_digits": "Noisy-label digits (no paper numbers): clean test accuracy (%)",
    "other": "Other runs: test accuracy (%)",
}


@functools.cache
def paper_results() -> dict[str, Any]:
    """The parsed ``paper_results.yaml``."""
    with RESULTS_FILE.open() as handle:
        return yaml.safe_load(handle)


@dataclass(frozen=True)
class PaperValue:
    mean: float
    ci: str | None  # the 95% confidence interval as printed ("0.1", "<0.1"), if any

    def __str__(self) -> str:
        return f"{self.mean:g} ± {self.ci}" if self.ci else f"{self.mean:g}"


@dataclass(frozen=True)
class Setting:
    """What a run reproduces: a table, a row label, a metric and the paper's two values."""

    table: str  # a key of TABLE_TITLES
    label: str
    metric: str  # "error" (100 - top-1 accuracy) or "accuracy"
    sgd: PaperValue | None = None
    sam: PaperValue | None = None
    order: int = 0  # the row's position in the paper's table

    def value(self, top1_accuracy: float) -> float:
        """A run's top-1 accuracy (%) in this setting's metric."""
        return 100.0 - top1_accuracy if self.metric == "error" else top1_accuracy

    def paper(self, family: str) -> PaperValue | None:
        """The paper's value for an optimizer family (``SGD`` or ``SAM``), if it has one."""
        return {"SGD": self.sgd, "SAM": self.sam}.get(family)


def _value(pair: list | None) -> PaperValue | None:
    return None if pair is None else PaperValue(float(pair[0]), pair[1])


def optimizer_family(cfg: Mapping[str, Any]) -> str:
    """The paper's names, ``SGD`` and ``SAM`` (``ASAM`` when adaptive); other SAM variants and
    base optimizers by their config names."""
    sam, base = cfg["sam"], cfg["optimizer"]["name"]
    if sam["name"] == "none":
        return "SGD" if base == "sgd" else base
    name = "ASAM" if sam.get("adaptive") else str(sam["name"]).upper()
    return name if base == "sgd" else f"{name} ({base})"


def optimizer_label(cfg: Mapping[str, Any]) -> str:
    """``optimizer_family`` with SAM's rho: runs group by this label across seeds."""
    family = optimizer_family(cfg)
    return family if cfg["sam"]["name"] == "none" else f"{family} ρ={cfg['sam']['rho']:g}"


LABEL_NOISE_EPOCHS = 200  # Table 4's training length (section 3.3)


def describe(cfg: Mapping[str, Any]) -> Setting:
    """The paper setting of a resolved run config (a plain dict or an OmegaConf node).

    A run matches a paper row by data set, model (without ``model.kwargs`` changes), augment,
    label noise and, where the row names them, epochs. Where the paper gives no epochs (Shake-
    Shake, PyramidNet) or the run trains another number than Table 4's 200, the label says
    how long the run trained, so runs of different lengths are never averaged together.
    """
    dataset, model = cfg["dataset"]["name"], cfg["model"]["name"]
    epochs = int(cfg["trainer"]["epochs"])
    noise = float(cfg["dataset"].get("label_noise", 0.0) or 0.0)
    augment = (cfg.get("augment") or {}).get("name", "basic")
    paper_model = not cfg["model"].get("kwargs")
    data = paper_results()
    if dataset == "digits":
        label = f"digits, {noise:.0%} label noise, {epochs} epochs"
        return Setting("noisy_digits", label, "accuracy", order=noise)
    if dataset == "cifar10" and noise > 0 and model == "cifar_resnet32" and paper_model:
        for i, row in enumerate(data["label_noise"]["rows"]):
            if row["label_noise"] == noise:
                label = f"ResNet-32, {row['row']}"
                if epochs != LABEL_NOISE_EPOCHS:
                    label += f" ({epochs} epochs; the paper: {LABEL_NOISE_EPOCHS})"
                sgd, sam = _value(row["sgd"]), _value(row["sam"])
                return Setting("label_noise", label, "accuracy", sgd, sam, i)
    if dataset in ("cifar10", "cifar100") and noise == 0 and paper_model:
        for i, row in enumerate(data["cifar"]["rows"]):
            if (row["model"], row["augment"]) != (model, augment):
                continue
            if row["epochs"] in (None, epochs):
                label = f"{row['row']}, {augment}, {dataset}"
                if row["epochs"] is None:
                    label += f" ({epochs} epochs)"
                pair, order = row[dataset], i + (100 if dataset == "cifar100" else 0)
                sgd, sam = _value(pair["sgd"]), _value(pair["sam"])
                return Setting("cifar", label, "error", sgd, sam, order)
    if dataset == "imagenet" and paper_model:
        for i, row in enumerate(data["imagenet"]["rows"]):
            if (row["model"], row["epochs"]) == (model, epochs):
                sgd, sam = _value(row["sgd"]["top1"]), _value(row["sam"]["top1"])
                return Setting("imagenet", row["row"], "error", sgd, sam, i)
    noise_text = f", {noise:.0%} label noise" if noise else ""
    label = f"{dataset} {model}{noise_text}, {augment}, {epochs} epochs"
    return Setting("other", label, "accuracy")

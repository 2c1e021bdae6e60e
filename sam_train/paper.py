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
    "finetune": "Table 3, fine-tuning: top-1 test error (%)",
    "label_noise": "Table 4, noisy CIFAR-10 labels: clean test accuracy (%)",
    "vit": "Chen et al. 2022, Table 2, ViTs from scratch on ImageNet: top-1 accuracy (%)",
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
    """What a run reproduces: a table, a row label, a metric and the paper's two values (its
    baseline optimizer's, ``SGD`` for the SAM paper and ``adamw`` for Chen et al.'s ViTs, and
    SAM's over that baseline)."""

    table: str  # a key of TABLE_TITLES
    label: str
    metric: str  # "error" (100 - top-1 accuracy) or "accuracy"
    baseline: PaperValue | None = None
    sam: PaperValue | None = None
    order: int = 0  # the row's position in the paper's table
    baseline_name: str = "SGD"  # optimizer_family's name for the baseline column

    def value(self, top1_accuracy: float) -> float:
        """A run's top-1 accuracy (%) in this setting's metric."""
        return 100.0 - top1_accuracy if self.metric == "error" else top1_accuracy

    @property
    def sam_name(self) -> str:
        """optimizer_family's name for SAM over this setting's baseline optimizer."""
        return "SAM" if self.baseline_name == "SGD" else f"SAM ({self.baseline_name})"

    def paper(self, family: str) -> PaperValue | None:
        """The paper's value for an optimizer family (the baseline's or SAM's), if it has one."""
        return {self.baseline_name: self.baseline, self.sam_name: self.sam}.get(family)


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


#: model.kwargs that regularise without changing the architecture (the ViT recipes' dropout)
REGULARISATION_KWARGS = frozenset({"drop_rate", "drop_path_rate", "attn_drop_rate"})


@dataclass(frozen=True)
class _Run:
    """The fields of a resolved config that pick a paper row."""

    dataset: str
    model: str
    epochs: int
    noise: float
    augment: str
    from_weights: bool  # model.pretrained or model.init_from: a fine-tune
    kwargs: frozenset[str]  # the model.kwargs keys

    @property
    def paper_model(self) -> bool:
        """No model.kwargs: the architecture the paper trained."""
        return not self.kwargs


def describe(cfg: Mapping[str, Any]) -> Setting:
    """The paper setting of a resolved run config (a plain dict or an OmegaConf node).

    A run matches a paper row by data set, model (without ``model.kwargs`` changes), augment,
    label noise, whether it starts from pretrained weights and, where the row names them,
    epochs. Where the paper gives no epochs (Shake-Shake, PyramidNet, Table 3's fine-tunes) or
    the run trains another number than Table 4's 200, the label says how long the run trained,
    so runs of different lengths are never averaged together.
    """
    model_cfg = cfg["model"]
    kwargs = frozenset(model_cfg.get("kwargs") or {})
    run = _Run(
        dataset=cfg["dataset"]["name"],
        model=model_cfg["name"],
        epochs=int(cfg["trainer"]["epochs"]),
        noise=float(cfg["dataset"].get("label_noise", 0.0) or 0.0),
        augment=(cfg.get("augment") or {}).get("name", "basic"),
        from_weights=bool(model_cfg.get("pretrained") or model_cfg.get("init_from")),
        kwargs=kwargs,
    )
    if run.dataset == "digits":
        label = f"digits, {run.noise:.0%} label noise, {run.epochs} epochs"
        return Setting("noisy_digits", label, "accuracy", order=run.noise)
    for match in (_label_noise, _cifar, _imagenet, _finetune, _vit):
        setting = match(run, paper_results())
        if setting is not None:
            return setting
    noise_text = f", {run.noise:.0%} label noise" if run.noise else ""
    label = f"{run.dataset} {run.model}{noise_text}, {run.augment}, {run.epochs} epochs"
    return Setting("other", label, "accuracy")


def _label_noise(run: _Run, data: dict[str, Any]) -> Setting | None:
    if (run.dataset, run.model) != ("cifar10", "cifar_resnet32") or not run.noise:
        return None
    if not run.paper_model or run.from_weights:
        return None
    for i, row in enumerate(data["label_noise"]["rows"]):
        if row["label_noise"] == run.noise:
            label = f"ResNet-32, {row['row']}"
            if run.epochs != LABEL_NOISE_EPOCHS:
                label += f" ({run.epochs} epochs; the paper: {LABEL_NOISE_EPOCHS})"
            return Setting(
                "label_noise", label, "accuracy", _value(row["sgd"]), _value(row["sam"]), i
            )
    return None


def _cifar(run: _Run, data: dict[str, Any]) -> Setting | None:
    if run.dataset not in ("cifar10", "cifar100") or run.noise or not run.paper_model:
        return None
    if run.from_weights:
        return None
    for i, row in enumerate(data["cifar"]["rows"]):
        if (row["model"], row["augment"]) != (run.model, run.augment):
            continue
        if row["epochs"] in (None, run.epochs):
            label = f"{row['row']}, {run.augment}, {run.dataset}"
            if row["epochs"] is None:
                label += f" ({run.epochs} epochs)"
            pair, order = row[run.dataset], i + (100 if run.dataset == "cifar100" else 0)
            return Setting("cifar", label, "error", _value(pair["sgd"]), _value(pair["sam"]), order)
    return None


def _imagenet(run: _Run, data: dict[str, Any]) -> Setting | None:
    if run.dataset != "imagenet" or not run.paper_model or run.from_weights or run.noise:
        return None
    for i, row in enumerate(data["imagenet"]["rows"]):
        if (row["model"], row["epochs"]) == (run.model, run.epochs):
            sgd, sam = _value(row["sgd"]["top1"]), _value(row["sam"]["top1"])
            return Setting("imagenet", row["row"], "error", sgd, sam, i)
    return None


def _finetune(run: _Run, data: dict[str, Any]) -> Setting | None:
    """Table 3: a pretrained EfficientNet fine-tuned on one of its data sets."""
    if not run.from_weights or not run.paper_model or run.noise or run.augment != "basic":
        return None
    table = data["finetune"]
    for key, spec in table["models"].items():
        if spec["model"] != run.model:
            continue
        for i, row in enumerate(table["rows"]):
            if row["dataset"] == run.dataset:
                label = f"{spec['row']}, {row['row']} ({run.epochs} epochs)"
                pair, order = row[key], i + 100 * list(table["models"]).index(key)
                return Setting(
                    "finetune", label, "error", _value(pair["sgd"]), _value(pair["sam"]), order
                )
    return None


def _vit(run: _Run, data: dict[str, Any]) -> Setting | None:
    """Chen et al. 2022: a ViT trained from scratch on ImageNet (dropout may be set)."""
    if run.dataset != "imagenet" or run.from_weights or run.noise:
        return None
    if run.kwargs - REGULARISATION_KWARGS:
        return None
    for i, row in enumerate(data["vit"]["rows"]):
        if (row["model"], row["epochs"]) == (run.model, run.epochs):
            base, sam = _value(row["adamw"]), _value(row["sam"])
            return Setting("vit", row["row"], "accuracy", base, sam, i, baseline_name="adamw")
    return None

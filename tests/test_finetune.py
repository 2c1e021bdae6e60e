"""Fine-tuning options on a tiny timm ViT: layer-wise lr decay through SAM's shared param
groups, gradient checkpointing under the two-pass step, and their refusals."""

from __future__ import annotations

import pytest
import torch

from sam_train.build import build_model, build_optimizer, build_run, build_step, build_strategy
from sam_train.errors import ConfigError
from sam_train.strategy import SingleProcess

# A 2-block ViT on 8x8 digits (4x4 patches), about 30k parameters.
VIT = [
    "experiment=quickstart",
    "model.name=vit_tiny_patch16_224",
    "+model.kwargs={img_size: 8, patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2}",
    "trainer.epochs=2",
    "scheduler.warmup_epochs=0",
]


def test_layer_decay_scales_each_groups_lr_and_sam_perturbs_over_all_groups(compose_cfg):
    cfg = compose_cfg([*VIT, "optimizer.layer_decay=0.5", "sam.rho=0.05"])
    run = build_run(cfg, build_strategy("cpu"))
    groups = run.optimizer.param_groups
    assert groups is run.step.base_optimizer.param_groups  # SAM shares the list
    scales = sorted({g["lr_scale"] for g in groups})
    # patch embedding (layer 0), 2 blocks, the head: scales 0.5 ** (3 - layer)
    assert scales == [0.125, 0.25, 0.5, 1.0]
    run.scheduler.step_update(num_updates=0)
    for group in groups:
        assert group["lr"] == pytest.approx(cfg.optimizer.lr * group["lr_scale"])
    images, targets = next(iter(run.loaders.train))
    before = [p.detach().clone() for p in run.model.parameters()]
    loss = torch.nn.functional.cross_entropy(run.model(images), targets)
    loss.backward()
    grads = [p.grad.detach().clone() for p in run.model.parameters()]
    run.optimizer.first_step(zero_grad=True)
    eps = [p.detach() - b for p, b in zip(run.model.parameters(), before, strict=True)]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    # one radius over every group together, whatever their lr scale: eps = rho g / ||g||
    for e, g in zip(eps, grads, strict=True):
        torch.testing.assert_close(e, 0.05 * g / norm, rtol=1e-3, atol=1e-7)
    run.optimizer.second_step()


def test_layer_decay_and_grad_checkpointing_are_refused_where_timm_lacks_them(compose_cfg):
    strategy = SingleProcess()
    cfg = compose_cfg(["experiment=quickstart", "optimizer.layer_decay=0.7"])
    model = build_model(cfg, 10, strategy)
    with pytest.raises(ConfigError, match=r"optimizer\.layer_decay needs a model with timm's"):
        build_optimizer(model, cfg.optimizer, cfg.sam)
    cfg = compose_cfg(["experiment=quickstart", "model.grad_checkpointing=true"])
    with pytest.raises(ConfigError, match="BatchNorm layers"):
        build_model(cfg, 10, strategy)


def _one_step(compose_cfg, checkpointing: bool) -> list[torch.Tensor]:
    cfg = compose_cfg(
        [
            *VIT,
            f"model.grad_checkpointing={str(checkpointing).lower()}",
            "+model.kwargs.drop_rate=0.2",
            "+model.kwargs.proj_drop_rate=0.2",
        ]
    )
    strategy = SingleProcess()
    torch.manual_seed(0)
    model = build_model(cfg, 10, strategy)
    assert model.grad_checkpointing is checkpointing
    model.train()
    optimizer = build_optimizer(model, cfg.optimizer, cfg.sam)
    step = build_step(cfg, model, optimizer, strategy)
    generator = torch.Generator().manual_seed(1)
    images, targets = torch.randn(16, 1, 8, 8, generator=generator), torch.arange(16) % 10
    torch.manual_seed(2)
    for _ in range(2):
        step(images, targets)
    return [p.detach().clone() for p in model.parameters()]


def test_grad_checkpointing_gives_the_same_sam_steps_with_dropout(compose_cfg):
    """The recomputed forward draws the same dropout masks (torch.utils.checkpoint restores
    the RNG), so both SAM passes and the update equal those without checkpointing."""
    plain, checkpointed = _one_step(compose_cfg, False), _one_step(compose_cfg, True)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_pretrained_without_the_hub_is_one_line(monkeypatch):
    import huggingface_hub.constants

    from sam_train.models import create_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="could not be fetched and are not in the local cache"):
        create_model("resnet18", 10, 3, pretrained=True)


def test_vit_cifar_preset_trains_then_fine_tunes_with_layer_decay_and_checkpointing(
    cli_in_process, tmp_path, tiny_cifar10
):
    """The CIFAR ViT preset on 40 tiny CIFAR images, then a fine-tune from its checkpoint
    with layer decay and gradient checkpointing: the whole path through the entry point."""
    tiny = [
        "experiment=vit_cifar_sam",
        f"dataset.root={tiny_cifar10}",
        "dataset.verify_checksums=false",
        "trainer.epochs=1",
        "trainer.batch_size=8",
        "trainer.num_workers=0",
        "trainer.device=cpu",
        "logger=none",
        "model.kwargs.depth=2",
    ]
    first, second = tmp_path / "first", tmp_path / "second"
    code, err = cli_in_process([*tiny, f"hydra.run.dir={first}"])
    assert code == 0, err
    best = first / "checkpoints" / "best.pt"
    code, err = cli_in_process(
        [
            *tiny,
            f"model.init_from={best}",
            "optimizer.layer_decay=0.75",
            "model.grad_checkpointing=true",
            f"hydra.run.dir={second}",
        ]
    )
    assert code == 0, err
    log = (second / "train.log").read_text()
    assert "tensors loaded, 0 missing, 0 unexpected" in log
    saved = torch.load(second / "checkpoints" / "last.pt", weights_only=False)
    assert saved["config"]["optimizer"]["layer_decay"] == 0.75
    assert len({g["lr_scale"] for g in saved["optimizer"]["param_groups"]}) == 4  # 2 blocks


@pytest.mark.parametrize(
    ("overrides", "mean"),
    [
        (["model=vit_base_patch16_sam"], (0.5, 0.5, 0.5)),  # vision_transformer's ViTs
        (["model=efficientnet_b7"], (0.485, 0.456, 0.406)),  # the TF EfficientNets: ImageNet's
        (["model=vit_base_patch16"], (0.485, 0.456, 0.406)),  # from scratch: ImageNet's
        (["model=vit_base_patch16_sam", "model.pretrained=false"], (0.485, 0.456, 0.406)),
    ],
)
def test_pretrained_weights_see_images_normalised_as_they_were_trained(
    compose_cfg, tmp_path, overrides, mean
):
    """timm's pretrained_cfg mean/std (what its resolve_data_config uses) in every ImageNet-style
    pipeline: the folder's and upsampled CIFAR's, training and test alike; no hub is reached."""
    from conftest import write_cifar, write_image_folder
    from torchvision.transforms import v2

    from sam_train.build import build_data

    write_image_folder(tmp_path / "folder", classes=2, per_class=2, size=36)
    write_cifar(tmp_path / "cifar", "cifar10", per_split=(4, 4))
    data_sets = [
        ["dataset=imagenet", f"dataset.root={tmp_path / 'folder'}", "dataset.num_classes=2"],
        ["dataset=cifar10", f"dataset.root={tmp_path / 'cifar'}", "dataset.image_size=48"],
    ]
    for data in data_sets:
        cfg = compose_cfg([*overrides, *data, "dataset.verify_checksums=false"])
        pair = build_data(cfg)
        for split in (pair.train, pair.test):
            (normalize,) = [t for t in split.transform.transforms if isinstance(t, v2.Normalize)]
            assert tuple(normalize.mean) == pytest.approx(mean), data

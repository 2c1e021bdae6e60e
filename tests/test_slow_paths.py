"""What would silently cost a user minutes or hours is said at once: ``model.pretrained=true``
without network reads the hub's cache after one short probe (no minute of retries; no test
touches the network: name resolution is made to fail), and ``trainer.amp=fp16`` on a CPU is
one warning line before training."""

from __future__ import annotations

import logging
import socket

import pytest
import torch

from sam_train.build import build_model, build_optimizer, build_step
from sam_train.errors import ConfigError
from sam_train.strategy import SingleProcess


def test_pretrained_without_network_probes_once_then_reads_the_cache_only(monkeypatch):
    import huggingface_hub.constants

    from sam_train.models import create_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    lookups = []

    def no_network(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(ConfigError, match="could not be fetched and are not in the local cache"):
        create_model("resnet18", 10, 3, pretrained=True)
    assert lookups == ["huggingface.co"]  # the probe, and no retry of the hub's
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored


def test_fp16_on_a_cpu_is_one_warning_before_training(compose_cfg, caplog):
    cfg = compose_cfg(["experiment=quickstart", "trainer.amp=fp16", "trainer.device=cpu"])
    strategy = SingleProcess(device=torch.device("cpu"))
    model = build_model(cfg, 10, strategy)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.sam)
    with caplog.at_level(logging.WARNING, logger="sam_train"):
        build_step(cfg, model, optimizer, strategy)
    (record,) = [r for r in caplog.records if "trainer.amp=fp16" in r.getMessage()]
    assert "on a CPU" in record.getMessage() and "\n" not in record.getMessage()

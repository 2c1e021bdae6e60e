"""How a distributed worker ends: ``process_group.exit_worker`` and its exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import subprocess_env

from sam_train.strategy.process_group import exit_status

_WORKER = """
import logging, sys, torch, torch.distributed as dist
from sam_train.strategy import process_group
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
with process_group.exits_worker():
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
    logging.getLogger("run").info("last log line")
    print("unflushed stdout", end="")
    sys.exit(3)
print("never printed")
"""


def test_a_worker_ends_flushed_with_its_exit_status(tmp_path):
    log = tmp_path / "run.log"
    result = subprocess.run(
        [sys.executable, "-c", _WORKER, str(log)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout == "unflushed stdout"
    assert "last log line" in log.read_text()


@pytest.mark.parametrize(
    ("code", "status", "printed"), [(None, 0, ""), (75, 75, ""), ("bye", 1, "bye\n")]
)
def test_exit_status_follows_pythons_rules_for_system_exit(capsys, code, status, printed):
    assert exit_status(SystemExit(code)) == status
    assert capsys.readouterr().err == printed

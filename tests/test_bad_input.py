"""Every mistake a user can make stops before any work, with one clear line and exit code 2
(typos and unknown group options too, checked before Hydra composes), and never touches an
earlier run."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch
from conftest import compose_config, write_cifar, write_image_folder
from hydra.errors import ConfigCompositionException
from torch import nn

from sam_train.checkpoint import save_checkpoint
from sam_train.errors import SamTrainError


def _checkpoints(root: Path) -> dict[str, Path]:
    """Unusable checkpoint files of every kind, and one from another model."""
    root.mkdir(parents=True, exist_ok=True)
    wrong_model = save_checkpoint(
        {"model": nn.Linear(3, 3).state_dict(), "global_step": 1}, root / "wrong_model.pt"
    )
    truncated = root / "truncated.pt"
    truncated.write_bytes(wrong_model.read_bytes()[:100])
    foreign = root / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    garbage = root / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 50)
    return {
        "wrong_model": wrong_model,
        "truncated": truncated,
        "foreign": foreign,
        "garbage": garbage,
    }


def _bad_data(root: Path) -> dict[str, Path]:
    imagenet = root / "imagenet_no_val"
    (imagenet / "train" / "n0").mkdir(parents=True)
    cifar = write_cifar(root / "cifar_bad", "cifar10")
    (cifar / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"corrupt")
    labels = write_cifar(root / "cifar_labels", "cifar10")
    batch = labels / "cifar-10-batches-py" / "data_batch_2"
    entry = pickle.loads(batch.read_bytes())
    entry["labels"][0] = 10  # one past the last class
    batch.write_bytes(pickle.dumps(entry))
    renamed = write_image_folder(root / "imagenet_renamed")
    (renamed / "val" / "n00000002").rename(renamed / "val" / "n00000009")
    truncated = write_image_folder(root / "imagenet_truncated")
    image = truncated / "train" / "n00000001" / "2.png"
    image.write_bytes(image.read_bytes()[:60])
    return {
        "imagenet_no_val": imagenet,
        "cifar_corrupt": cifar,
        "cifar_labels": labels,
        "imagenet_renamed": renamed,
        "imagenet_truncated": truncated,
    }


# (case, overrides, expected message fragment, exit code); {ckpt:...} and {data:...} are paths
CASES = [
    ("unknown dataset", ["dataset=mnist"], "dataset=mnist is not an option; dataset has: ", 2),
    ("unknown model group", ["model=vgg99"], "model=vgg99 is not an option; model has: ", 2),
    ("unknown timm model", ["model.name=resnet_18"], "is not a timm model", 2),
    ("unknown optimizer", ["optimizer.name=lion"], "optimizer.name='lion' is not one of: sgd", 2),
    ("unknown variant", ["sam.name=bogus"], "sam.name='bogus' is not one of", 2),
    ("negative rho", ["sam.rho=-0.05"], "sam.rho must be >= 0, got -0.05", 2),
    ("non-numeric rho", ["sam.rho=abc"], "Value 'abc' of type 'str' could not be converted", 2),
    (
        "misspelt key",
        ["trainer.batchsize=32"],
        "unknown key trainer.batchsize; did you mean trainer.batch_size?",
        2,
    ),
    (
        "misspelt key added with +",
        ["+trainer.batchsize=32"],
        "unknown key trainer.batchsize; did you mean trainer.batch_size?",
        2,
    ),
    ("negative seed", ["seed=-1"], "seed must be in [0, ", 2),
    ("seed beyond 64 bits", [f"seed={2**64}"], "seed must be in [0, ", 2),
    ("mps device", ["trainer.device=mps"], "trainer.device='mps' is not one of", 2),
    ("gpu device", ["trainer.device=gpu"], "trainer.device='gpu' is not one of", 2),
    ("negative momentum", ["optimizer.momentum=-1"], "optimizer.momentum must be >= 0", 2),
    (
        "adamw betas above 1",
        ["optimizer=adamw", "optimizer.betas=[2,2]"],
        "optimizer.betas[0] must be in [0, 1)",
        2,
    ),
    ("negative eps", ["optimizer.eps=-1"], "optimizer.eps must be >= 0", 2),
    ("empty training split", ["dataset.test_fraction=0.9999"], "leaves 0 training", 2),
    ("digits with 3 channels", ["dataset.in_chans=3"], "set dataset.in_chans=1", 2),
    ("negative width", ["model.kwargs.width=-4"], "model.kwargs.width=-4 (int) rejected", 2),
    ("zero width", ["model.kwargs.width=0"], "model.kwargs.width=0 (int) leaves", 2),
    ("text width", ["model.kwargs.width=abc"], "model.kwargs.width='abc' (str) rejected", 2),
    ("list drop rate", ["model.kwargs.drop_rate=[0.1]"], "model.kwargs.drop_rate=[0.1]", 2),
    ("pretrained without weights", ["model.pretrained=true"], "digits_cnn has no pretrained", 2),
    ("negative warmup lr", ["scheduler.warmup_lr=-1"], "scheduler.warmup_lr must be >= 0", 2),
    ("min lr above lr", ["scheduler.min_lr=1"], "must not exceed optimizer.lr", 2),
    (
        "milestones not increasing",
        ["scheduler=multistep", "scheduler.milestones=[5,3]"],
        "scheduler.milestones must be strictly increasing",
        2,
    ),
    (
        "gpu loader with cutout",
        ["dataset=cifar10", "dataset.loader=gpu", "augment=cutout"],
        "dataset.loader=gpu implements random crop and flip only",
        2,
    ),
    (
        "gpu loader with upsampled cifar",
        ["dataset=cifar10", "dataset.loader=gpu", "dataset.image_size=224"],
        "dataset.loader=gpu crops and flips CIFAR at 32 px",
        2,
    ),
    (
        "indivisible batch",
        ["trainer.batch_size=64", "trainer.accum_steps=5"],
        "trainer.batch_size=64 must be divisible by trainer.accum_steps=5",
        2,
    ),
    ("batch above data", ["trainer.batch_size=4096"], "exceeds the 1347 training images", 2),
    (
        "missing cifar",
        ["dataset=cifar10", "dataset.root=/nonexistent", "dataset.download=false"],
        "cifar10 not found or unreadable under dataset.root='/nonexistent'",
        2,
    ),
    (
        "corrupt cifar",
        [
            "dataset=cifar10",
            "dataset.root={data:cifar_corrupt}",
            "dataset.download=false",
            "dataset.verify_checksums=false",
        ],
        "data_batch_3",  # the one line names the unreadable file
        2,
    ),
    (
        "cifar label out of range",
        [
            "dataset=cifar10",
            "dataset.root={data:cifar_labels}",
            "dataset.download=false",
            "dataset.verify_checksums=false",
        ],
        "data_batch_2",
        2,
    ),
    (
        "imagenet val class named differently",
        [
            "dataset=imagenet",
            "dataset.root={data:imagenet_renamed}",
            "dataset.num_classes=3",
            "dataset.image_size=32",
            "model.name=resnet18",
        ],
        "n00000009",
        2,
    ),
    (
        "truncated image, verified before training",
        [
            "dataset=imagenet",
            "dataset.root={data:imagenet_truncated}",
            "dataset.num_classes=3",
            "dataset.image_size=32",
            "dataset.verify=true",
            "model.name=resnet18",
        ],
        "2.png",
        2,
    ),
    (
        "imagenet without val",
        ["dataset=imagenet", "dataset.root={data:imagenet_no_val}"],
        "imagenet folder missing",
        2,
    ),
    ("missing checkpoint", ["resume=/nonexistent/last.pt"], "no such checkpoint file", 2),
    ("truncated checkpoint", ["resume={ckpt:truncated}"], "is corrupt or not a torch file", 2),
    ("garbage checkpoint", ["resume={ckpt:garbage}"], "is corrupt or not a torch file", 2),
    ("foreign checkpoint", ["resume={ckpt:foreign}"], "is not a sam-train checkpoint", 2),
    (
        "checkpoint of another model",
        ["resume={ckpt:wrong_model}", "resume_strict=false"],  # past the config comparison
        "does not match the configured model (missing: fc.bias, fc.weight",
        2,
    ),
    ("unwritable output folder", ["hydra.run.dir=/proc/sam-train-run"], "is not writable", 2),
    (
        "cuda without gpu",
        ["trainer.device=cuda"] if not torch.cuda.is_available() else [],
        "CUDA is not available" if not torch.cuda.is_available() else "",
        2,
    ),
]


@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    paths = {f"ckpt:{k}": v for k, v in _checkpoints(root / "ckpt").items()}
    paths.update({f"data:{k}": v for k, v in _bad_data(root / "data").items()})
    return paths


def _fill(override: str, paths: dict[str, Path]) -> str:
    for key, path in paths.items():
        override = override.replace("{" + key + "}", str(path))
    return override


@pytest.mark.parametrize(
    ("name", "overrides", "message", "code"),
    [c for c in CASES if c[1]],
    ids=[c[0] for c in CASES if c[1]],
)
def test_bad_input_exits_with_one_clear_message(
    cli_in_process, bad_paths, tmp_path, name, overrides, message, code
):
    args = [_fill(o, bad_paths) for o in overrides]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    returncode, stderr = cli_in_process(["trainer.epochs=1", "trainer.num_workers=0", *args])
    assert returncode == code, stderr[-1500:]
    assert message in stderr, stderr[-1500:]
    assert "Traceback" not in stderr
    if code == 2:
        assert stderr.count("sam-train: error:") == 1
    assert not (tmp_path / "run" / "checkpoints").exists(), "no work may start"


# Keys a user might override, with plausible and implausible values.
FUZZ_KEYS = {
    "sam.rho": ["0", "0.05", "-1", "1e9", "nan", "inf", "x", "[1,2]", "null"],
    "sam.name": ["sam", "none", "asam", "", "SAM"],
    "sam.adaptive": ["true", "false", "maybe", "2"],
    "optimizer.lr": ["0.1", "0", "-0.1", "1e-9", "abc", "nan"],
    "optimizer.name": ["sgd", "adamw", "adam", "1"],
    "optimizer.weight_decay": ["0", "5e-4", "-1"],
    "optimizer.betas": ["[0.9,0.99]", "0.9", "[a]", "[2,2]"],
    "optimizer.momentum": ["0.9", "-1"],
    "optimizer.eps": ["1e-8", "-1"],
    "trainer.batch_size": ["96", "0", "-8", "1.5", "100000"],
    "trainer.accum_steps": ["1", "2", "0", "3"],
    "trainer.epochs": ["1", "0", "-1", "two"],
    "trainer.amp": ["none", "bf16", "fp16", "fp8"],
    "trainer.clip_grad_norm": ["null", "1.0", "0", "-1"],
    "trainer.label_smoothing": ["0.1", "-0.1", "2"],
    "trainer.log_every": ["1", "0"],
    "trainer.device": ["cpu", "mps", "gpu"],
    "+trainer.batchsize": ["32"],
    "dataset.label_noise": ["0", "0.5", "1", "1.5", "-0.1"],
    "dataset.test_fraction": ["0.25", "0", "1", "0.9999"],
    "dataset.in_chans": ["1", "3"],
    "scheduler.name": ["cosine", "multistep", "linear"],
    "scheduler.warmup_epochs": ["0", "1", "5", "-1"],
    "scheduler.warmup_lr": ["1e-5", "-1"],
    "scheduler.min_lr": ["0", "1"],
    "scheduler.milestones": ["[1]", "[]", "1", "[5,3]"],
    "model.kwargs.drop_rate": ["0.1", "2", "x", "[0.1]"],
    "model.kwargs.width": ["8", "-4", "0", "abc"],
    "model.kwargs.not_an_arg": ["1"],
    "model.name": ["digits_cnn", "resnet10t", "nope"],
    "checkpoint.best_metric": ["test/acc1", "test/loss", "train/acc1"],
    "checkpoint.every_n_steps": ["0", "5", "-2"],
    "seed": ["0", "-1", "1.5", str(2**64)],
    "resume": ["null", "auto"],
}


@pytest.mark.slow
def test_fuzzed_overrides_never_end_in_a_raw_exception(tmp_path):
    """Random override sets either train (one tiny epoch) or fail with a user error; each
    goes through what the CLI runs: validate, adjust, train."""
    from sam_train.config import adjust, validate
    from sam_train.train import train

    rng = random.Random(1234)
    outcomes = {"trained": 0, "rejected": 0}
    for trial in range(30):
        keys = rng.sample(sorted(FUZZ_KEYS), k=rng.randint(1, 4))
        overrides = [f"{k}={rng.choice(FUZZ_KEYS[k])}" for k in keys]
        base = [
            "trainer.epochs=1",
            "trainer.num_workers=0",
            "trainer.device=cpu",
            "trainer.batch_size=256",
            "trainer.eval_batch_size=512",
            "logger=none",
        ]
        overrides = base + [
            o
            for o in overrides
            if o.split("=")[0] not in {b.split("=")[0] for b in base} or "epochs" not in o
        ]
        try:
            cfg = compose_config(overrides)
            validate(cfg)
            adjust(cfg)
            train(cfg, tmp_path / f"trial{trial}")
            outcomes["trained"] += 1
        except ConfigCompositionException as err:
            assert str(err).strip(), overrides
            outcomes["rejected"] += 1
        except SamTrainError as err:
            assert str(err) and "\n" not in str(err), (overrides, str(err))
            outcomes["rejected"] += 1
    assert outcomes["trained"] >= 2 and outcomes["rejected"] >= 8, outcomes


# The commonest typos through the real entry point: exactly one line on stderr, exit code 2.
TYPOS = [
    (["trainer.epohcs=3"], "unknown key trainer.epohcs; did you mean trainer.epochs?"),
    (["+trainer.epohcs=3"], "unknown key trainer.epohcs; did you mean trainer.epochs?"),
    (["epochs=3"], "unknown key epochs; did you mean trainer.epochs?"),
    (["optimzer=sgd"], "unknown key optimzer; did you mean optimizer?"),
    (["sam=sma"], "sam=sma is not an option; did you mean sam=sam?"),
    (["optimizer=adam"], "optimizer=adam is not an option; did you mean optimizer=adamw?"),
    (
        ["experiment=quickstrat"],
        "experiment=quickstrat is not an option; did you mean experiment=quickstart?",
    ),
    (
        ["experiment=noisy_digits"],  # a preset in a subfolder, found by its name
        "experiment=noisy_digits is not an option; did you mean experiment=paper/noisy_digits?",
    ),
    (["logger=[tensorboard,cvs]"], "logger=cvs is not an option; did you mean logger=csv?"),
    (["recipe=sam_finetune"], "recipe is not in the defaults: write +recipe=sam_finetune"),
    (["+sam=asam"], "sam is in the defaults already: write sam=asam (no +)"),
    (
        ["sam.rho=abc"],
        "sam.rho=abc is refused: Value 'abc' of type 'str' could not be converted to Float",
    ),
    (
        ["seed=1.5"],
        "seed=1.5 is refused: Value '1.5' of type 'float' could not be converted to Integer",
    ),
    (
        ["-m", "sam.rho=0.05,abc"],  # each value of a sweep
        "sam.rho=0.05,abc is refused: Value 'abc' of type 'str' could not be converted to Float",
    ),
    (
        ["sam.rho=[1,"],
        "cannot parse the override 'sam.rho=[1,' (no viable alternative at input '[1,'); "
        "write key=value",
    ),
    (["--epochs", "3"], "--epochs is not an option of sam-train: write trainer.epochs=3"),
    (
        ["--trainer.epochs=3"],
        "--trainer.epochs=3 is not an option of sam-train: write trainer.epochs=3",
    ),
    (["seed=1", "--lr", "0.1"], "--lr is not an option of sam-train: write optimizer.lr=0.1"),
    (
        ["--multirn", "seed=1,2"],
        "--multirn is not an option of sam-train: did you mean --multirun?",
    ),
    (["hydra.sweep.dri=x"], "unknown key hydra.sweep.dri; did you mean hydra.sweep.dir?"),
    (  # Hydra's groups: its own, the plugins' and configs/hydra's options
        ["hydra/launcher=basik"],
        "hydra/launcher=basik is not an option; did you mean hydra/launcher=basic?",
    ),
    (["hydra/launchr=basic"], "hydra/launchr is not a config group; did you mean hydra/launcher?"),
    (
        ["hydra/sweeper/sampler=tp"],
        "hydra/sweeper/sampler=tp is not an option; did you mean hydra/sweeper/sampler=tpe?",
    ),
]


@pytest.mark.parametrize(("args", "line"), TYPOS, ids=[" ".join(t[0]) for t in TYPOS])
def test_typos_get_one_line_with_the_fix(cli_in_process, tmp_path, args, line):
    run_dir = tmp_path / "run"
    returncode, stderr = cli_in_process([*args, f"hydra.run.dir={run_dir}"])
    assert returncode == 2
    assert stderr.splitlines() == [f"sam-train: error: {line}"]
    assert not run_dir.exists(), "nothing may be written"


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "sam.rho=0.05,0.1", "trainer.epochs=range(1,3)"],
        ["--multirun", "hparams_search=optuna", "hydra/launcher=basic"],
        ["hydra/launcher=submitit_local", "hydra/job_logging=sam_train", "~hydra/help"],
        ["+recipe=sam_finetune", "experiment=paper/noisy_digits", "logger=[tensorboard,csv]"],
        ["model.kwargs.drop_rate=0.1", "~resume", "++seed=3", "hydra.run.dir=x"],
        ["--cfg", "job", "-p", "sam"],
        ["--info", "defaults"],
        ["-sc", "install=bash"],
        ["--help", "trainer.epohcs=3"],  # help is Hydra's, whatever follows
        [  # Hydra's own keys: its schema's, and those of the plugins it leaves open
            "hydra.launcher.partition=gpu",
            "hydra.sweeper.n_trials=3",
            "+hydra.job.env_set.FOO=1",
            "hydra.job_logging.root.level=DEBUG",
            "hydra.output_subdir=null",
        ],
    ],
)
def test_valid_command_lines_pass_the_check(args):
    from sam_train.cli import config_dir
    from sam_train.config.overrides import check_command_line

    check_command_line(args, config_dir())  # raises ConfigError otherwise


def test_hydra_flags_keep_working(cli_in_process, capsys):
    returncode, stderr = cli_in_process(["--help"])
    assert returncode == 0 and "sam-train" in capsys.readouterr().out, stderr
    returncode, stderr = cli_in_process(["--cfg", "job", "experiment=paper/noisy_digits"])
    assert returncode == 0, stderr
    assert "label_noise: 0.4" in capsys.readouterr().out


def test_hydra_flags_may_follow_the_overrides(cli_in_process, tmp_path):
    """``sam-train experiment=quickstart -m seed=1,2`` sweeps (argparse refused it with
    Hydra's usage block); a flag with a value among the overrides is one line."""
    sweep = tmp_path / "sweep"
    args = ["experiment=quickstart", "trainer.epochs=0", "-m", "seed=1,2"]
    code, err = cli_in_process([*args, f"hydra.sweep.dir={sweep}"])
    assert code == 1, err  # the sweep ran: validation refused both jobs
    assert "sam-train: 2 job(s) of the sweep failed:" in err.splitlines()
    code, err = cli_in_process(["seed=1", "--cfg", "job", "sam=sam"])
    assert code == 2
    assert err.splitlines() == [
        "sam-train: error: unrecognized arguments: sam=sam: write Hydra's flags "
        "(-m, --cfg job, ...) before key=value"
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--epochs", "3"], "--epochs is not an option of sam-train: write trainer.epochs=3"),
        (["experiment=quickstart", "trainer.epochs=0"], "trainer.epochs must be > 0, got 0"),
        (
            ["experiment=quickstart", "sam.m=5"],
            "sam.m=5 must divide the per-device batch 64 (trainer.batch_size=64 over 1 processes)",
        ),
    ],
    ids=["typo", "bad value", "batch split"],
)
def test_user_error_fails_in_a_real_process_before_torch_is_imported(cli, tmp_path, args, expected):
    """``python -m sam_train --epochs 3`` (the command-line check) or ``trainer.epochs=0``
    (Hydra, then the validator) or a batch m-sharpness cannot split (the CLI's check, as
    it is in a launch's workers): one line, exit 2, and torch never imported (Python's own
    import log, ``PYTHONPROFILEIMPORTTIME``, lists every module the process loaded). Each
    worker of a launch with a bad value saves the import of torchvision and timm too."""
    args = [*args, f"hydra.run.dir={tmp_path / 'run'}"]
    done = cli(args, tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    lines = done.stderr.splitlines()
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")
    }
    assert done.returncode == 2, done.stderr[-1500:]
    expected = f"sam-train: error: {expected}"
    assert [line for line in lines if not line.startswith("import time:")] == [expected]
    assert "hydra" in imported and "torch" not in imported


# The checkpoint commands' overrides and flags: sam-train's answers (one implementation), read
# before the checkpoint is (the file here is no checkpoint, so reading it would fail otherwise).
CHECKPOINT_COMMANDS = ("sam-eval", "sam-export", "sam-predict")
CHECKPOINT_TYPOS = [  # (commands, arguments, the line)
    (
        CHECKPOINT_COMMANDS,
        ["trainer.bach_size=8"],
        "unknown key trainer.bach_size; did you mean trainer.batch_size?",
    ),
    (
        CHECKPOINT_COMMANDS,
        ["+trainer.bach_size=8"],
        "unknown key trainer.bach_size; did you mean trainer.batch_size?",
    ),
    (
        CHECKPOINT_COMMANDS,
        ["+trainer.eval_batch_size=8"],
        "+trainer.eval_batch_size=8: the checkpoint's config has trainer.eval_batch_size: "
        "write trainer.eval_batch_size=8 (no +)",
    ),
    (
        CHECKPOINT_COMMANDS,
        ["dataset=cifa10"],
        "dataset=cifa10 (did you mean dataset=cifar10?): {prog} rebuilds the checkpoint's config "
        "as it was trained, without choosing config groups or presets again; override single "
        "keys (dataset.KEY=VALUE)",
    ),
    (
        CHECKPOINT_COMMANDS,
        ["experiment=quickstrat"],
        "experiment=quickstrat (did you mean experiment=quickstart?): {prog} rebuilds the "
        "checkpoint's config as it was trained, without choosing config groups or presets "
        "again; override single keys (KEY=VALUE)",
    ),
    (
        CHECKPOINT_COMMANDS,
        ["trainer.eval_batch_size=abc"],
        "trainer.eval_batch_size=abc is refused: Value 'abc' of type 'str' could not be "
        "converted to Integer",
    ),
    (
        CHECKPOINT_COMMANDS,
        ["model.kwargs.width=[1,"],  # YAML's error, which ended in a traceback
        "cannot parse the override 'model.kwargs.width=[1,' (expected the node content, but "
        "found '<stream end>'); write key=value",
    ),
    (
        ["sam-export", "sam-predict"],
        ["--batch-size", "8"],
        "unrecognized arguments: --batch-size 8; write trainer.batch_size=8 (see --help)",
    ),
    (  # sam-eval's batches are the test loader's
        ["sam-eval"],
        ["--batch-size", "8"],
        "unrecognized arguments: --batch-size 8; write trainer.eval_batch_size=8 (see --help)",
    ),
    (
        ["sam-eval"],
        ["--devcie", "cpu"],
        "unrecognized arguments: --devcie cpu; did you mean --device? (see --help)",
    ),
    (
        ["sam-eval"],
        ["--pre-class"],
        "unrecognized arguments: --pre-class; did you mean --per-class? (see --help)",
    ),
    (
        ["sam-export"],
        ["--emma"],
        "unrecognized arguments: --emma; did you mean --ema? (see --help)",
    ),
    (
        ["sam-predict"],
        ["--top_k", "3"],
        "unrecognized arguments: --top_k 3; did you mean --top-k? (see --help)",
    ),
]


def _checkpoint_command(prog: str, tmp_path: Path) -> tuple[object, list[str]]:
    """(the command's module, its valid arguments but the overrides) on a file that only
    looks like a checkpoint."""
    from sam_train import evaluate, export, predict

    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not read")
    image = tmp_path / "digit.png"
    image.write_bytes(b"not read either")
    return {
        "sam-eval": (evaluate, [str(checkpoint), "--out", str(tmp_path / "eval")]),
        "sam-export": (export, [str(checkpoint), "--out", str(tmp_path / "exported")]),
        "sam-predict": (predict, [str(checkpoint), str(image), "--out", str(tmp_path / "p.csv")]),
    }[prog]


@pytest.mark.parametrize(
    ("prog", "args", "line"),
    [(prog, args, line) for progs, args, line in CHECKPOINT_TYPOS for prog in progs],
    ids=[f"{prog} {' '.join(args)}" for progs, args, _ in CHECKPOINT_TYPOS for prog in progs],
)
def test_checkpoint_commands_answer_typos_as_sam_train_does(prog, args, line, tmp_path, capsys):
    module, argv = _checkpoint_command(prog, tmp_path)
    with pytest.raises(SystemExit) as stop:
        module.main([*argv, *args])
    out = capsys.readouterr()
    assert stop.value.code == 2 and not out.out
    assert out.err.splitlines() == [f"{prog}: error: {line.format(prog=prog)}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit.png", "run"], "nothing written"

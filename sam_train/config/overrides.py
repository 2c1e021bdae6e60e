"""The command line checked before Hydra composes it: one line naming the fix, not Hydra's
multi-line composition error (which also advises ``+key=`` for a typo).

Checked here, against the schema (``schema.TrainConfig``) and the files under ``configs/``:
argparse-style flags (``--epochs 3``), overrides Hydra cannot parse, misspelt keys (with or
without ``+``), unknown group options (``sam=sma``, presets in subfolders such as
``experiment=paper/noisy_digits``) and values a field's type refuses (``seed=1.5``); ``hydra.*``
keys against Hydra's own schema and ``hydra/`` groups against its config repository (their
values, and Hydra's flags, are Hydra's). The same checks answer the overrides of the commands
that rebuild a checkpoint's config (sam-eval, sam-export, sam-predict, sam-analyze). Torch-free
and cheap (no composition; Hydra's plugins are imported only for a ``hydra/`` group).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, NoReturn, Union, get_args, get_origin, get_type_hints

import yaml
from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses
from hydra.conf import HydraConf
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, RangeSweep
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sam_train.config.schema import TrainConfig
from sam_train.errors import ConfigError, closest, closest_flag

MAX_LISTED = 12  # options named when none is close


def flags_first(argv: list[str]) -> list[str]:
    """Hydra's flags that take no value (``-m``, ``--multirun``, ``--resolve``, ...) moved
    before the overrides: argparse refuses overrides on both sides of one
    (``sam-train experiment=quickstart -m seed=1,2`` printed Hydra's usage block)."""
    parser = get_args_parser()
    bare = {o for a in parser._actions if a.nargs == 0 for o in a.option_strings}
    return [a for a in argv if a in bare] + [a for a in argv if a not in bare]


def _refuse(message: str) -> NoReturn:
    raise ConfigError(f"{message}: write Hydra's flags (-m, --cfg job, ...) before key=value")


def check_command_line(argv: list[str], config_dir: str | Path) -> None:
    """Raise :class:`ConfigError` (one line) for the first bad argument of ``sam-train ARGV``;
    ``--help``, ``--hydra-help`` and shell completion are left to Hydra unchecked."""
    parser = get_args_parser()
    _check_flags(argv, parser)
    parser.error = _refuse  # argparse's usage block and exit, as one line
    args = parser.parse_args(argv)
    if args.help or args.hydra_help or args.shell_completion:
        return
    folder = Path(config_dir)
    groups = config_groups(folder)
    overrides = [_parse(text) for text in args.overrides]
    chosen = _chosen_groups(folder, overrides, groups)
    for override in overrides:
        name = override.key_or_group
        if name.startswith("hydra.") and _schema_field(name, hydra_keys()) is None:
            near = closest(name, hydra_keys())
            hint = f"did you mean {near}?" if near else "sam-train --cfg hydra lists them"
            raise ConfigError(f"unknown key {name}; {hint}")
        if name.startswith("hydra/") and not override.is_delete():
            _check_hydra_group(name, _values(override), folder)
            continue
        if name.startswith("hydra") or override.package is not None:
            continue  # Hydra's own settings (their values Hydra's), or a config placed elsewhere
        if name in groups and not override.is_delete():
            _check_add(override, chosen)
            _check_options(name, _values(override), groups[name])
        else:
            _check_key(override, groups)


def checkpoint_overrides_problem(
    overrides: Iterable[str], config_dir: str | Path, prog: str
) -> str | None:
    """Why ``key=value`` overrides of a checkpoint's config (sam-eval, sam-export, sam-predict,
    sam-analyze) cannot apply, in one line (None: they can): sam-train's answers for a misspelt
    key, a group option or a value the key's type refuses. The checkpoint's config is rebuilt
    as it was trained, so a group is not chosen again and nothing is added (``+``) or removed."""
    groups = config_groups(Path(config_dir))
    try:
        for text in overrides:
            given, _, value = text.partition("=")
            key = given.lstrip("+~")
            if key in groups:
                return _group_choice(prog, key, value, groups[key])
            _check_field(key, value, _dotlist_values(f"{key}={value}", key), groups)
            if given.startswith("~"):
                return f"{text}: {prog} cannot remove a key of the checkpoint's config"
            if given != key:
                return f"{text}: the checkpoint's config has {key}: write {key}={value} (no +)"
    except ConfigError as err:
        return str(err)
    return None


def _dotlist_values(text: str, key: str) -> Iterator[Any]:
    """The value of ``key=value`` as the checkpoint commands read it (``OmegaConf.from_dotlist``,
    YAML), only once the key is known."""
    try:
        yield OmegaConf.select(OmegaConf.from_dotlist([text]), key)
    except (yaml.YAMLError, OmegaConfBaseException) as err:
        raise _unparsable(text, err) from err


def _group_choice(prog: str, group: str, option: str, options: tuple[str, ...]) -> str:
    """A group option (``dataset=cifar10``, ``experiment=...``) given to a checkpoint command."""
    near = "" if option in options else f" ({_option_hint(group, option, options)})"
    example = f"{group}.KEY=VALUE" if group in schema_keys() else "KEY=VALUE"
    return (
        f"{group}={option}{near}: {prog} rebuilds the checkpoint's config as it was trained, "
        f"without choosing config groups or presets again; override single keys ({example})"
    )


def _check_flags(argv: list[str], parser: Any) -> None:
    """``--epochs 3`` or ``--trainer.epochs=3``: say which override to write instead."""
    known = set(parser._option_string_actions)
    for index, arg in enumerate(argv):
        flag = arg.split("=", 1)[0]
        if not arg.startswith("-") or _is_known_flag(flag, known):
            continue
        if "=" in arg:
            value = arg.split("=", 1)[1]
        elif index + 1 < len(argv) and not argv[index + 1].startswith("-"):
            value = argv[index + 1]
        else:
            value = "..."
        name = flag.lstrip("-").replace("-", "_")
        near = closest_flag(flag, known)
        hint = f"did you mean {near}?" if near else flag_hint(name, value)
        raise ConfigError(f"{arg} is not an option of sam-train: {hint}")


def _is_known_flag(flag: str, known: set[str]) -> bool:
    """Hydra's flags, and the unambiguous prefixes argparse accepts for them (``--hel``)."""
    if flag in known:
        return True
    longer = [option for option in known if option.startswith("--") and option.startswith(flag)]
    return flag.startswith("--") and len(longer) == 1


def flag_hint(name: str, value: str) -> str:
    """What to write for a flag ``--name value`` that no command has: ``trainer.epochs=3``, the
    key of that name (or of that last part), else the nearest key; values, not sections
    (``--ema`` is no ``ema=...``)."""
    keys = [key for key in schema_keys() if not any(k.startswith(f"{key}.") for k in schema_keys())]
    if name in keys:
        return f"write {name}={value}"
    same_leaf = sorted(key for key in keys if key.rsplit(".", 1)[-1] == name)
    if len(same_leaf) == 1:
        return f"write {same_leaf[0]}={value}"
    if same_leaf:
        return f"write one of {', '.join(f'{key}={value}' for key in same_leaf)}"
    near = closest(name, keys)
    return f"write key=value overrides, e.g. {near or 'trainer.epochs'}={value}"


def _parse(text: str) -> Override:
    try:
        return OverridesParser.create().parse_override(text)
    except HydraException as err:  # OverrideParseException, or the grammar's own
        raise _unparsable(text, err) from err


def _unparsable(text: str, err: Exception) -> ConfigError:
    reason = getattr(err, "problem", None) or str(err).strip().splitlines()[0]  # YAML's, Hydra's
    return ConfigError(f"cannot parse the override {text!r} ({reason}); write key=value")


def _values(override: Override) -> Iterator[Any]:
    """The value(s) an override sets: one, a list (``logger=[tensorboard,csv]``) or a sweep's."""
    value = override.value()
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        yield from override.sweep_iterator()
    elif not override.is_sweep_override():  # glob() and the sweepers' interval(): not checked
        yield value


@cache
def config_groups(config_dir: Path) -> dict[str, tuple[str, ...]]:
    """Each config group under ``config_dir`` and its options; a preset in a subfolder is an
    option of its group by its relative path (``experiment`` -> ``paper/noisy_digits``)."""
    groups: dict[str, tuple[str, ...]] = {}
    for folder in sorted(p for p in config_dir.rglob("*") if p.is_dir()):
        options = sorted(
            p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml")
        )
        groups[folder.relative_to(config_dir).as_posix()] = tuple(options)
    return groups


@cache
def default_groups(config_file: Path) -> frozenset[str]:
    """The groups a config file's defaults list chooses (``train.yaml``: not ``recipe``)."""
    if not config_file.is_file():
        return frozenset()
    defaults = OmegaConf.load(config_file).get("defaults", [])
    keys = (str(next(iter(d))) for d in defaults if isinstance(d, Mapping))
    return frozenset(key.removeprefix("override ").strip("/") for key in keys)


def _chosen_groups(
    folder: Path, overrides: list[Override], groups: dict[str, tuple[str, ...]]
) -> frozenset[str]:
    """The groups in the defaults: train.yaml's and those of the options chosen here (a
    preset may add a group to the defaults list)."""
    chosen = set(default_groups(folder / "train.yaml"))
    for override in overrides:
        if override.key_or_group in groups and not override.is_sweep_override():
            for option in _values(override):
                for name in option if isinstance(option, list) else [option]:
                    chosen |= default_groups(folder / override.key_or_group / f"{name}.yaml")
    return frozenset(chosen)


def _check_hydra_group(group: str, values: Iterable[Any], folder: Path) -> None:
    """``hydra/launcher=basik``: Hydra's groups and their options (``configs/hydra`` and the
    installed plugins' too), as Hydra's own repository lists them."""
    groups = hydra_groups(str(folder))
    if group not in groups:
        near = closest(group, groups)
        hint = f"did you mean {near}?" if near else f"Hydra has: {', '.join(sorted(groups))}"
        raise ConfigError(f"{group} is not a config group; {hint}")
    _check_options(group, values, groups[group])


@cache
def hydra_groups(config_dir: str) -> dict[str, tuple[str, ...]]:
    """Every group under ``hydra/`` and its options on Hydra's search path for ``config_dir``:
    read only for an override that names one (the plugins are imported to list theirs)."""
    from hydra._internal.config_repository import ConfigRepository  # what hydra.main reads
    from hydra._internal.utils import create_config_search_path
    from hydra.core.object_type import ObjectType
    from hydra.core.plugins import Plugins

    Plugins.instance()  # registers the plugins' configs (hydra/launcher=submitit_slurm, ...)
    repository = ConfigRepository(create_config_search_path(config_dir))
    groups: dict[str, tuple[str, ...]] = {}
    todo = ["hydra"]
    while todo:
        group = todo.pop()
        options = repository.get_group_options(group, ObjectType.CONFIG)
        groups[group] = tuple(sorted(options))
        todo += [f"{group}/{sub}" for sub in repository.get_group_options(group, ObjectType.GROUP)]
    del groups["hydra"]  # hydra/config: the primary config's own node, not a choice
    return groups


def _check_add(override: Override, chosen: frozenset[str]) -> None:
    """``+`` adds a group the defaults list lacks; one it has is overridden without ``+``."""
    group, text = override.key_or_group, _text(override)
    if override.is_add() and group in chosen:
        raise ConfigError(f"{group} is in the defaults already: write {group}={text} (no +)")
    if not override.is_add() and not override.is_force_add() and group not in chosen:
        raise ConfigError(f"{group} is not in the defaults: write +{group}={text}")


def _check_options(group: str, values: Iterable[Any], options: tuple[str, ...]) -> None:
    for value in values:
        for option in value if isinstance(value, list) else [value]:
            if option is None or str(option) in options:
                continue
            raise ConfigError(
                f"{group}={option} is not an option; {_option_hint(group, str(option), options)}"
            )


def _option_hint(group: str, option: str, options: tuple[str, ...]) -> str:
    by_name = {path.rsplit("/", 1)[-1]: path for path in options}
    near = closest(option, options) or by_name.get(closest(option, by_name) or "")
    if near is not None:
        return f"did you mean {group}={near}?"
    listed = ", ".join(options[:MAX_LISTED])
    more = f" ... ({len(options)} in all)" if len(options) > MAX_LISTED else ""
    return f"{group} has: {listed}{more}"


def _check_key(override: Override, groups: dict[str, tuple[str, ...]]) -> None:
    values = [] if override.is_delete() else _values(override)  # a key removed: no value
    _check_field(override.key_or_group, _text(override), values, groups)


def _check_field(
    key: str, text: str, values: Iterable[Any], groups: dict[str, tuple[str, ...]]
) -> None:
    """``key`` is in the schema (else the nearest key) and its type takes each value."""
    field = _schema_field(key)
    if field is None:
        raise ConfigError(_unknown_key(key, groups))
    values = list(values)  # parsed, and refused if unparsable, under an open dict too
    owner, name = field
    if owner is None:
        return  # under an open dict (model.kwargs)
    node = OmegaConf.structured(owner)
    for value in values:
        try:
            OmegaConf.update(node, name, value, merge=True)
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(f"{key}={text} is refused: {reason}") from err


def _text(override: Override) -> str:
    return (override.input_line or "=?").partition("=")[2]  # "" for a removal (~key)


def _unknown_key(key: str, groups: dict[str, tuple[str, ...]]) -> str:
    """``unknown key trainer.epohcs; did you mean trainer.epochs?``: the nearest full key or
    group, else the key of the same last name (``epochs`` -> ``trainer.epochs``)."""
    candidates = [*schema_keys(), *(g for g in groups if not g.startswith("hydra"))]
    near = closest(key, candidates)
    if near is None:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in schema_keys()}
        near = by_leaf.get(closest(leaf, by_leaf) or "")
    hint = f"did you mean {near}?" if near else "sam-train --cfg job lists the keys"
    return f"unknown key {key}; {hint}"


@cache
def schema_keys() -> dict[str, tuple[type | None, str]]:
    """Every key of the schema, dotted -> (its dataclass, its field name)."""
    return dict(_walk(TrainConfig, ""))


def _walk(cls: type, prefix: str) -> Iterator[tuple[str, tuple[type | None, str]]]:
    hints = get_type_hints(cls)
    for f in fields(cls):
        key, kind = f"{prefix}{f.name}", _unwrap(hints[f.name])
        yield key, (cls, f.name)
        if is_dataclass(kind):
            yield from _walk(kind, f"{key}.")


@cache
def hydra_keys() -> dict[str, tuple[type | None, str]]:
    """Every key of Hydra's own schema (``hydra.run.dir``, ...); its launcher and sweeper are
    open (their keys are the chosen plugin's)."""
    return dict(_walk(HydraConf, "hydra."))


def _schema_field(
    key: str, keys: dict[str, tuple[type | None, str]] | None = None
) -> tuple[type | None, str] | None:
    """(dataclass, field) of ``key`` in ``keys`` (default: the schema's); (None, key) below an
    open field: a dict (``model.kwargs``) or ``Any`` (Hydra's ``launcher``)."""
    keys = schema_keys() if keys is None else keys
    if key in keys:
        return keys[key]
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = keys.get(".".join(parts[:end]))
        if parent is not None:
            owner, name = parent
            kind = _unwrap(get_type_hints(owner)[name]) if owner else None
            return (None, key) if get_origin(kind) is dict or kind in (dict, Any) else None
    return None


def _unwrap(hint: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint

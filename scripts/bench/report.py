"""The report: bench.json and the markdown table against the targets."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable
from typing import Any

import torch

from .ddp import DDP_MODES
from .options import REPO
from .sharding import markdown_rows


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def headline(row: dict[str, Any], key: str) -> tuple[float, str]:
    """The ratio a target is judged on: the median of the back-to-back ratios of CPU time
    where that is the work (one CPU thread), else of wall time."""
    if row.get(key + "_cpu") is not None:
        return row[key + "_cpu"], "paired CPU time"
    return row[key + "_paired"], "paired wall time"


def _ratio_cell(row: dict[str, Any], key: str, digits: int = 3) -> str:
    value, basis = headline(row, key)
    return (
        f"**{value:.{digits}f}** ({basis}; medians of wall times {row[key]:.{digits}f}, "
        f"paired {row[key + '_paired']:.{digits}f})"
    )


def _ms(stats: dict[str, float]) -> str:
    return f"{1e3 * stats['median_s']:.1f}"


def _section_times(meta: dict[str, Any]) -> str:
    """Where the run's time went (a slow section shows here), if the report records it."""
    times = meta.get("section_s") or {}
    return f" ({', '.join(f'{name} {s:g} s' for name, s in times.items())})" if times else ""


def markdown(report: dict[str, Any]) -> str:
    """The targets table, then one table per section."""
    meta, machine = report["meta"], report["meta"]["machine"]
    gpu = f", {machine['gpu']}" if "gpu" in machine else ""
    lines = [
        f"`{meta['command']}` at commit {machine['git_commit']}: torch {machine['torch']}, "
        f"{machine['device']}{gpu}, {machine['threads']} thread(s) on {machine['cpu_count']} "
        f"cores; medians of {meta['reps']} interleaved repetitions after {meta['warmup']} "
        f"warm-up step(s); {meta['wall_s']} s in all{_section_times(meta)}.",
        f"The machine was shared: load average {meta['load_before'][0]} before, "
        f"{meta['load_after'][0]} after. Absolute times suffer; each comparison is "
        "interleaved and judged on its paired ratio (the median over repetitions of the "
        "back-to-back ratio) of CPU time where that is the work (one thread), else of wall "
        "time.",
        "",
        "| measure | workload | measured | target | met |",
        "|---|---|---|---|---|",
    ]
    for section, rows in TARGET_ROWS.items():
        for row in report.get(section, []):
            lines += rows(row, report["targets"])
    for section, table in DETAIL_TABLES.items():
        if report.get(section):
            lines += ["", *table(report)]
    return "\n".join(lines) + "\n"


def _ratio_target(row: dict, t: dict) -> list[str]:
    value, _ = headline(row, "sam_over_base")
    return [
        f"| SAM step / base step | {row['workload']} | {_ratio_cell(row, 'sam_over_base')} "
        f"| <= {t['sam_over_base']} | {_met(value <= t['sam_over_base'])} |"
    ]


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _trainer_target(row: dict, t: dict) -> list[str]:
    value, _ = headline(row, "trainer_efficiency")
    target = t["trainer_efficiency"]
    measure = "trainer efficiency (minimal loop / SAMStep)"
    cell = _ratio_cell(row, "trainer_efficiency")
    return [_row(measure, row["workload"], cell, f">= {target}", _met(value >= target))]


def _memory_target(row: dict, t: dict) -> list[str]:
    value = row["sam_weight_copies_over_params"]
    other = ", ".join(row["sam_other_tensors"]) or "nothing"
    return [
        f"| SAM extra memory held / parameter bytes | {row['workload']} | {value:.3f} "
        f"(weight copies, {row['sam_weight_copy_bytes'] / 2**20:.2f} MiB) + "
        f"{row['sam_other_bytes']} B ({other}) | <= {t['sam_extra_memory_over_params']} | "
        f"{_met(value <= t['sam_extra_memory_over_params'])} |"
    ]


def _scalar_temporaries(row: dict) -> bool:
    """The ascent's temporaries are norms: the largest is the vector of per-tensor norms (one
    float32 per parameter tensor); a parameter-sized temporary is larger than that."""
    return row["sam_largest_temporary_bytes"] <= 4 * row["param_tensors"]


def _hot_path_target(row: dict, t: dict) -> list[str]:
    reads = row["host_reads_per_step"]
    worst = max(reads.values())
    peak = row["sam_peak_extra_over_params"]
    cells = ", ".join(f"{name} {value:g}" for name, value in reads.items())
    return [
        f"| host reads per step | {row['workload']} | {cells} | "
        f"{t['host_reads_per_step']} | {_met(worst == t['host_reads_per_step'])} |",
        f"| SAM peak extra bytes (backup + temporaries) / parameter bytes (met: no temporary "
        f"larger than one float per parameter tensor) | {row['workload']} | {peak:.6f} "
        f"(backup 1x + {row['sam_temporary_bytes']} B of temporaries, the largest "
        f"{row['sam_largest_temporary_bytes']} B; {row['param_tensors']} parameter tensors) | "
        f"<= {t['sam_peak_extra_over_params']} | {_met(_scalar_temporaries(row))} |",
        _row(
            "SAM bookkeeping / step (CPU time: ascent, restore, stats snapshots, finite check)",
            row["workload"],
            f"{100 * row['sam_bookkeeping_share']:.1f}%",
            "<= 5% (ResNet-50)",
            _met(row["sam_bookkeeping_share"] <= 0.05) if "resnet50" in row["key"] else "-",
        ),
        f"| optimizer.foreach / optimizer.fused SAM step | {row['workload']} | "
        f"{_ratio_cell(row['optimizer_impl'], 'foreach_over_fused')} | - | - |",
    ]


def _ddp_target(row: dict, t: dict) -> list[str]:
    default = row["sam default"]
    reductions = default["allreduces_per_step"] / max(default["buckets"], 1)
    calls = (
        f"{reductions:g} ({default['allreduces_per_step']:g} calls, {default['buckets']} bucket(s))"
    )
    measure = "gradient all-reduces per step, DDP default (per bucket)"
    return [_row(measure, row["workload"], calls, 1, _met(reductions == 1))]


def _data_target(row: dict, t: dict) -> list[str]:
    target = t["loader_over_training"]
    lines = []
    for label, train in row["training"].items():
        value = train["loader_over_training"]
        lines.append(
            f"| loader / SAM training images/s ({row['dataset']}, {row['num_workers']} "
            f"workers) | {label} | {value:.1f} | >= {target} | {_met(value >= target)} |"
        )
    if "loader_over_bare_loop_cpu" in row:
        lines.append(
            f"| loader / bare loop images per CPU-second ({row['dataset']}) | - | "
            f"{row['loader_over_bare_loop_cpu']:.2f} | - | - |"
        )
    lines.append(
        f"| torch.manual_seed calls per example loaded ({row['dataset']}) | - | "
        f"{row['reseeds_per_example']:g} | 0 | {_met(row['reseeds_per_example'] == 0)} |"
    )
    return lines


def _compile_target(row: dict, t: dict) -> list[str]:
    if "variant" in row:
        reasons = "; ".join(row["break_reasons"]) or "none"
        return [
            f"| torch.compile graph breaks / graphs, sam={row['variant']}, first "
            f"{row['steps']} steps | {row['workload']} | {row['graph_breaks']} / "
            f"{row['graphs']} ({reasons}) | - | - |"
        ]
    if "error" in row:
        return [f"| torch.compile speed-up | {row['workload']} | failed | - | - |"]
    return [
        f"| torch.compile speed-up (eager / compiled) | {row['workload']} | "
        f"{_ratio_cell(row, 'speedup', 2)} | - | - |"
    ]


TARGET_ROWS: dict[str, Callable[[dict, dict], list[str]]] = {
    "ratio": _ratio_target,
    "trainer": _trainer_target,
    "memory": _memory_target,
    "hot_path": _hot_path_target,
    "ddp": _ddp_target,
    "data": _data_target,
    "compile": _compile_target,
}


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cells) + " |" for cells in rows),
    ]


def _mib(n: float, digits: int = 2) -> str:
    return f"{n / 2**20:.{digits}f}"


def _ratio_table(report: dict) -> list[str]:
    columns = ["workload", "base ms/step", "SAM ms/step", "SAM images/s"]
    return _table(
        columns,
        [
            [r["workload"], _ms(r["base"]), _ms(r["sam"]), f"{r['sam_images_per_s']:.0f}"]
            for r in report["ratio"]
        ],
    )


def _trainer_table(report: dict) -> list[str]:
    columns = ["workload", "minimal loop ms/step", "SAMStep ms/step"]
    columns += ["minimal loop ops/step", "SAMStep ops/step"]
    rows = [
        [r["workload"], _ms(r["minimal"]), _ms(r["trainer"])]
        + [str(r[name].get("ops_per_step", "")) for name in ("minimal", "trainer")]
        for r in report["trainer"]
    ]
    return _table(columns, rows)


def _memory_table(report: dict) -> list[str]:
    columns = ["workload", "parameters MiB", "base optimizer state MiB", "SAM extra MiB"]
    columns.append("SAMStep's running-stats snapshots KiB")
    rows = [
        [
            r["workload"],
            _mib(r["param_bytes"]),
            _mib(r["base_state_bytes"]),
            _mib(r["sam_extra_bytes"]),
            f"{r['running_stats_snapshot_bytes'] / 2**10:.1f}",
        ]
        for r in report["memory"]
    ]
    return _table(columns, rows)


def _hot_path_table(report: dict) -> list[str]:
    columns = ["workload", "SAM backup MiB", "SAM temporaries B"]
    columns += ["non-finite mask copy, foreach MiB (fused: 0)", "fused ms/step", "foreach ms/step"]
    rows = [
        [
            r["workload"],
            _mib(r["sam_backup_bytes"], 3),
            str(r["sam_temporary_bytes"]),
            _mib(r["mask_copy_bytes_foreach"], 3),
            _ms(r["optimizer_impl"]["fused"]),
            _ms(r["optimizer_impl"]["foreach"]),
        ]
        for r in report["hot_path"]
    ]
    return _table(columns, rows)


def _ddp_table(report: dict) -> list[str]:
    columns = ["DDP, 2 processes, gloo", "mode", "all-reduce calls/step", "MiB/step"]
    columns += ["buffer broadcasts/step", "ms/step (not interleaved)"]
    rows = [
        [
            r["workload"],
            mode,
            f"{r[mode]['allreduces_per_step']:g}",
            _mib(r[mode]["allreduce_bytes_per_step"]),
            f"{r[mode]['buffer_broadcasts_per_step']:g}",
            f"{1e3 * r[mode]['step_s']:.0f}",
        ]
        for r in report["ddp"]
        for mode in DDP_MODES
    ]
    return _table(columns, rows)


def _data_table(report: dict) -> list[str]:
    device = report["meta"]["machine"]["device"]
    rows = []
    for r in report["data"]:
        for kind, stats in r["loaders"].items():
            what = (
                f"DataLoader, {r['num_workers']} workers, batch {r['batch_size']}"
                if kind == "dataloader"
                else f"dataset.loader=gpu on {device}"
            )
            rows.append([r["dataset"], what, f"{stats['images_per_s']:.0f}"])
        for label, train in r["training"].items():
            rows.append([r["dataset"], f"SAM training, {label}", f"{train['images_per_s']:.0f}"])
    return _table(["data set", "what", "images/s"], rows)


def _compile_table(report: dict) -> list[str]:
    columns = ["workload", "eager ms/step", "compiled ms/step", "first compiled step s"]
    rows = [
        [r["workload"], _ms(r["eager"]), _ms(r["compiled"]), f"{r['compile_s']:.0f}"]
        for r in report["compile"]
        if "eager" in r
    ]
    return _table(columns, rows)


DETAIL_TABLES: dict[str, Callable[[dict], list[str]]] = {
    "ratio": _ratio_table,
    "trainer": _trainer_table,
    "memory": _memory_table,
    "hot_path": _hot_path_table,
    "ddp": _ddp_table,
    "fsdp": lambda report: markdown_rows(report["fsdp"]),
    "data": _data_table,
    "compile": _compile_table,
}

"""W&B's ``.wandb`` transaction log read back (a resumed run's :class:`WandbLogger` skips
what a dead session holds; tests compare runs): wandb 0.31 writes it from its Go service
(``wandb-core``) and ships no Python reader, so this follows its LevelDB-log layout
(a 7-byte ``:W&B`` header, 32 KiB blocks of records, each a 7-byte header - checksum, length,
type - and a piece of one serialized ``wandb_internal_pb2.Record``). A running session's
logger polls its own file with :func:`records_after` until a checkpoint's rows are in it."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

HEADER = b":W&B"
FIRST_RECORD = len(HEADER) + 3  # after the file header: ``:W&B``, a 2-byte magic, a version
BLOCK = 32 * 1024
RECORD_HEADER = struct.Struct("<IHB")  # checksum, length, type
WHOLE, LAST = 1, 4  # the record types that end a record (FIRST and MIDDLE continue it)


def records(path: Path) -> Iterator:
    """The complete records of ``path`` in order (a record cut short by a kill is left out)."""
    return (record for _end, record in records_after(path, FIRST_RECORD))


def records_after(path: Path, position: int) -> Iterator[tuple[int, object]]:
    """(where it ends, record) for each complete record from ``position``, the end of an
    earlier record or ``FIRST_RECORD``: a reader polling a growing file parses
    only what is new."""
    from wandb.proto import wandb_internal_pb2 as pb

    with Path(path).open("rb") as file:
        if file.read(len(HEADER)) != HEADER:  # empty: the service died before its first write
            return
        file.seek(position)
        data = file.read()
    at, pieces = 0, b""  # at: the offset in ``data``; position + at: the one in the file
    while at + RECORD_HEADER.size <= len(data):
        room = BLOCK - (position + at) % BLOCK
        if room < RECORD_HEADER.size:  # the block's padding
            at += room
            continue
        _checksum, length, kind = RECORD_HEADER.unpack_from(data, at)
        start = at + RECORD_HEADER.size
        if kind == 0 or start + length > len(data):  # zeros past the last write, or cut short
            return
        pieces, at = pieces + data[start : start + length], start + length
        if kind in (WHOLE, LAST):
            record = pb.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield position + at, record


def kinds(path: Path) -> list[str]:
    """The kind of each record (``run``, ``history``, ``summary``, ``exit``...)."""
    return [record.WhichOneof("record_type") for record in records(path)]


def history(path: Path) -> list[tuple[int, str, float]]:
    """Every (step, name, value) of the run's history rows, W&B's own keys (``_step``,
    ``_runtime``, ``_timestamp``) left out."""
    rows = (r.history for r in records(path) if r.WhichOneof("record_type") == "history")
    return [
        (row.step.num, ".".join(item.nested_key) or item.key, json.loads(item.value_json))
        for row in rows
        for item in row.item
        if not (item.key or item.nested_key[0]).startswith("_")
    ]

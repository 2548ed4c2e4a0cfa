"""How listed files become shards: big files split into row ranges at row-group boundaries,
small ones packed together (the rules are in ``scoring.formats.parquet``'s docstring)."""

from __future__ import annotations

from collections.abc import Sequence

from scoring.config import InputConfig
from scoring.shard import FileInfo, Shard

SMALL = 16  # a file under rows_per_shard / SMALL rows is packed with others
Layout = list[int] | None  # rows per row group; None when the footer cannot be read
NOT_READ: Layout = [-1]  # a small file whose footer planning did not need
Range = tuple[int | None, int | None, int | None, tuple[int, ...]]


def pack(
    name: str,
    files: Sequence[FileInfo],
    layouts: Sequence[Layout],
    bytes_per_row: float,
    inp: InputConfig,
    first_index: int,
) -> list[Shard]:
    """The shards of ``files`` (of format ``name``), numbered from ``first_index``, in order."""
    per_shard, small = inp.rows_per_shard, inp.rows_per_shard / SMALL
    shards: list[Shard] = []
    group: list[tuple[FileInfo, int | None, float]] = []  # file, its rows if known, estimate
    grouped = 0.0  # the group's rows, estimated

    def flush() -> None:
        nonlocal grouped
        if group:
            shards.append(packed(name, first_index + len(shards), group))
            group.clear()
        grouped = 0.0

    for f, layout in zip(files, layouts):
        rows = None if layout is None or layout is NOT_READ else sum(layout)
        estimate = f.size / bytes_per_row if rows is None else rows
        if estimate < small:
            group.append((f, rows, estimate))
            grouped += estimate
            if grouped >= per_shard or len(group) >= inp.files_per_shard:
                flush()
            continue
        flush()
        for n, start, stop, groups in row_ranges(layout, per_shard):
            shard_id = f.uri if start is None else f"{f.uri}#rows={start}-{stop}"
            index = first_index + len(shards)
            file = ((f.uri,), (f.size,), (f.version,))
            shards.append(Shard(index, shard_id, name, *file, n, start, stop, groups))
    flush()
    return shards


def bytes_per_row(files: Sequence[FileInfo], layouts: Sequence[Layout]) -> float:
    """Bytes per row over the files whose footer was read (1 when none has a row)."""
    read = [(f.size, sum(layout)) for f, layout in zip(files, layouts) if layout]
    rows = sum(n for _, n in read)
    return sum(size for size, _ in read) / rows if rows else 1.0


def packed(kind: str, index: int, group: list[tuple[FileInfo, int | None, float]]) -> Shard:
    """One shard of small files, id ``FIRST_FILE+N``."""
    files = [f for f, _, _ in group]
    known = [n for _, n, _ in group]
    exact = None if None in known else sum(n for n in known if n is not None)
    shard_id = files[0].uri if len(files) == 1 else f"{files[0].uri}+{len(files) - 1}"
    estimate = None if exact is not None else round(sum(e for _, _, e in group))
    return Shard(
        index,
        shard_id,
        kind,
        tuple(f.uri for f in files),
        tuple(f.size for f in files),
        tuple(f.version for f in files),
        exact,
        rows_estimate=estimate,
    )


def row_ranges(layout: Layout, rows_per_shard: int) -> list[Range]:
    """``(rows, start, stop, row_groups)`` per shard of one file; start is None when it is whole."""
    if layout is None:
        return [(None, None, None, ())]
    total = sum(layout)
    if total <= rows_per_shard:
        return [(total, None, None, ())]
    out: list[Range] = []
    groups: list[int] = []
    start = count = 0
    for g, n in enumerate(layout):
        if groups and count + n > rows_per_shard:
            out.append((count, start, start + count, tuple(groups)))
            start, groups, count = start + count, [], 0
        groups.append(g)
        count += n
    if groups:
        out.append((count, start, start + count, tuple(groups)))
    if len(out) == 1:  # one row group larger than rows_per_shard: the file stays whole
        return [(total, None, None, ())]
    return out

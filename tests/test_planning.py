"""Units that end-to-end jobs reach only indirectly: how files become shards (row ranges, packing),
how a plan is extended on resume, how Parquet schemas unify. Real Parquet files, no Ray."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoring.config_file import load_config
from scoring.errors import PlanChanged
from scoring.formats import packing
from scoring.formats.schemas import unify
from scoring.shard import FileInfo


@pytest.mark.parametrize(
    ("layout", "per_shard", "expected"),
    [
        (None, 10, [(None, None, None, ())]),  # footer unreadable: whole, rows unknown
        ([4, 4], 10, [(8, None, None, ())]),  # fits in one shard: whole
        ([4, 4, 4], 8, [(8, 0, 8, (0, 1)), (4, 8, 12, (2,))]),
        ([5, 5, 5], 8, [(5, 0, 5, (0,)), (5, 5, 10, (1,)), (5, 10, 15, (2,))]),
        ([20], 8, [(20, None, None, ())]),  # one group larger than a shard: stays whole
        ([3, 20, 3], 8, [(3, 0, 3, (0,)), (20, 3, 23, (1,)), (3, 23, 26, (2,))]),
    ],
)
def test_row_ranges_split_at_row_group_boundaries(layout, per_shard, expected) -> None:
    ranges = packing.row_ranges(layout, per_shard)
    assert ranges == expected
    if len(ranges) > 1:  # contiguous, and every row of the file in exactly one range
        assert [r[1] for r in ranges[1:]] == [r[2] for r in ranges[:-1]]
        assert ranges[0][1] == 0 and ranges[-1][2] == sum(layout)


def _cfg(uri: str, **inp: object):
    data = {
        "model": {"uri": "m.onnx"},
        "input": {"uri": uri, "format": "parquet", **inp},
        "output": {"uri": "o"},
    }
    return load_config(data=data, environ={})


def test_small_files_are_packed_and_big_ones_split() -> None:
    inp = _cfg("d", rows_per_shard=100, files_per_shard=3).input
    small = [FileInfo(f"d/s{i}.parquet", 10, "v") for i in range(5)]
    big = FileInfo("d/big.parquet", 1000, "v")
    layouts: list[packing.Layout] = [[2]] * 5 + [[60, 60, 60]]
    shards = packing.pack("parquet", [*small, big], layouts, 5.0, inp, first_index=7)
    assert [s.index for s in shards] == [7, 8, 9, 10, 11]
    # files_per_shard=3 closes the first pack; the next pack is closed by the big file.
    assert [s.files for s in shards[:2]] == [tuple(f.uri for f in small[:3]), tuple(f.uri for f in small[3:])]
    assert shards[0].id == "d/s0.parquet+2" and shards[0].rows == 6
    assert [(s.id, s.row_start, s.row_stop) for s in shards[2:]] == [
        ("d/big.parquet#rows=0-60", 0, 60),
        ("d/big.parquet#rows=60-120", 60, 120),
        ("d/big.parquet#rows=120-180", 120, 180),
    ]


def test_unread_footers_are_estimated_from_bytes_per_row() -> None:
    inp = _cfg("d", rows_per_shard=160).input
    files = [FileInfo(f"d/{i}.parquet", 100, "v") for i in range(3)]
    shards = packing.pack("parquet", files, [packing.NOT_READ] * 3, 20.0, inp, 0)
    assert len(shards) == 1 and shards[0].rows is None and shards[0].rows_estimate == 15


def _write(path: Path, n: int) -> None:
    pq.write_table(pa.table({"x": pa.array(range(n), pa.float32())}), path, row_group_size=4)


def _parquet(cfg):
    from scoring.formats import list_input

    fmt, files = list_input(cfg.input, {}, None)
    return fmt, files


def test_extend_adds_new_files_and_refuses_changed_or_gone_ones(tmp_path: Path) -> None:
    from scoring.plan import extend, make_plan

    data = tmp_path / "d"
    data.mkdir()
    for i in range(2):
        _write(data / f"{i}.parquet", 8)
    cfg = _cfg(str(data), rows_per_shard=4)
    fmt, files = _parquet(cfg)
    plan = make_plan(cfg, "sha", fmt, files)
    assert [s.rows for s in plan.shards] == [4, 4, 4, 4]

    same, new = extend(plan, cfg, "sha", fmt, files)
    assert new == [] and same.shards == plan.shards

    _write(data / "2.parquet", 4)
    fmt, files = _parquet(cfg)
    grown, new = extend(plan, cfg, "sha", fmt, files)
    assert [s.index for s in new] == [4] and new[0].files == (str(data / "2.parquet"),)
    assert grown.shards == plan.shards + new

    with pytest.raises(PlanChanged, match="the model changed"):
        extend(plan, cfg, "other", fmt, files)
    with pytest.raises(PlanChanged, match="config key 'input.rows_per_shard' changed"):
        extend(plan, _cfg(str(data), rows_per_shard=5), "sha", fmt, files)
    _write(data / "0.parquet", 12)
    fmt, files = _parquet(cfg)
    with pytest.raises(PlanChanged, match=r"0.parquet changed since the plan was made"):
        extend(plan, cfg, "sha", fmt, files)
    (data / "0.parquet").unlink()
    fmt, files = _parquet(cfg)
    with pytest.raises(PlanChanged, match=r"0.parquet was in the plan .* but is gone"):
        extend(plan, cfg, "sha", fmt, files)


def test_a_plan_keeps_its_keys_through_its_table_form() -> None:
    from scoring.plan import Plan, from_table, to_table

    cfg = _cfg("d", rows_per_shard=4)
    inp = cfg.input
    shards = packing.pack("parquet", [FileInfo("d/a.parquet", 10, "v1")], [[4, 4]], 1.0, inp, 0)
    plan = Plan(shards, "sha", {"input.rows_per_shard": 4}, 1.0, None, "job", True)
    back = from_table(to_table(plan))
    assert back.shards == plan.shards
    assert dataclasses.replace(back, created_at=1.0) == plan


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (pa.int32(), pa.int64(), pa.int64()),
        (pa.uint32(), pa.int64(), pa.int64()),
        (pa.uint64(), pa.int64(), None),  # no signed type holds both
        (pa.float32(), pa.float64(), pa.float64()),
        (pa.int64(), pa.float64(), None),  # integers and floats never mix
        (pa.string(), pa.large_string(), pa.large_string()),
        (pa.dictionary(pa.int8(), pa.string()), pa.string(), pa.string()),
        (pa.null(), pa.int8(), pa.int8()),
        (pa.list_(pa.int32(), 3), pa.list_(pa.int64(), 3), pa.list_(pa.int64(), 3)),
        (pa.list_(pa.int32(), 3), pa.list_(pa.int32(), 4), None),
        (pa.list_(pa.float32()), pa.large_list(pa.float64()), pa.large_list(pa.float64())),
        (pa.string(), pa.binary(), None),
    ],
)
def test_schema_unification_widens_without_changing_meaning(a, b, expected) -> None:
    assert unify(a, b) == expected
    assert unify(b, a) == expected

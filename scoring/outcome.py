"""Whether a job that ran succeeded: a job that scored nothing has failed, whatever the stage.

A job whose rows were all rejected did not succeed, even within ``errors.max_rejected_rows``:
the model, or how it is fed, is the problem, not the data. And when every row of the first
shards is rejected with the same kind (every image undecodable, every text null, every row
failing in ONNX Runtime), the job stops there instead of rejecting the rest the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoring.errors import JobFailed, ModelFailure
from scoring.record import ShardRecord

FIRST_SHARDS = 3  # shards rejected whole, with one kind, before the job stops
# What every row failing at one stage says, and what to change.
HINTS = {
    "read": "A problem of the input or the config, not of some rows: check input.uri, input.format "
    "and the columns or members the job reads",
    "decode": "A problem of the config, not of some rows: check input.image_column (it must hold "
    "encoded images) and the files themselves",
    "preprocess": "A problem of the config or the model, not of some rows: check input.columns, "
    "input.text, input.function and that the columns fit the model's inputs",
    "postprocess": "A problem of the postprocessing config or output.function, not of some rows: "
    "`scoring validate CONFIG` decodes the first rows here and shows the error",
    "infer": "A problem of the model or of how it is fed, not of some rows: `scoring validate "
    "CONFIG` scores the first rows here and shows the error",
    "write": "The output cannot be written (its storage: space, credentials, endpoint): fix it, "
    "then run again with --mode resume; what was written stays",
}


def only_kind(rec: ShardRecord) -> str | None:
    """The one ``"stage: error"`` that rejected every row of ``rec``, if so."""
    kinds = rec.rejected_by_kind
    if rec.rows and rec.rows_failed == rec.rows and len(kinds) == 1:
        return next(iter(kinds))
    return None


class Watch:
    """Stops a job whose first shards had every row rejected with the same kind."""

    def __init__(self, planned: int) -> None:
        self.needed = min(FIRST_SHARDS, planned)
        self.seen: list[ShardRecord] = []

    def settled(self, rec: ShardRecord) -> None:
        """Raises ``JobFailed`` when the first shards say the config or the model is wrong."""
        if len(self.seen) < self.needed:
            self.seen.append(rec)
            if len(self.seen) == self.needed > 1:
                self.check("the job stopped early")

    def check(self, what: str) -> None:
        """Raises ``JobFailed`` when every shard seen so far was rejected whole with one kind."""
        kinds = [only_kind(r) for r in self.seen]
        if kinds and kinds[0] is not None and all(k == kinds[0] for k in kinds):
            raise JobFailed(_message(kinds[0], self.seen, what))


def nothing_scored(records: Sequence[ShardRecord]) -> str | None:
    """Why a job that rejected rows and scored none has failed; None when it scored a row."""
    scored = sum(r.rows - r.rows_failed for r in records)
    if scored or not any(r.rows_failed for r in records):
        return None
    counts: dict[str, int] = {}
    for r in records:
        for kind, n in r.rejected_by_kind.items():
            counts[kind] = counts.get(kind, 0) + n
    kind = max(counts, key=lambda k: counts[k]) if counts else "read: unknown"
    failed = [r for r in records if kind in r.rejected_by_kind] or list(records)
    return _message(kind, failed, "no row was scored")


def _message(kind: str, records: Sequence[ShardRecord], what: str) -> str:
    stage = kind.split(":", 1)[0]
    rows = sum(r.rows_failed for r in records)
    first = next((r.first_error for r in records if r.first_error), "")
    error = ModelFailure if stage == "infer" else JobFailed
    return str(
        error(
            f"{what}: all {rows:,} rows of {len(records)} shard(s) were rejected at stage {stage} "
            f"({kind}), e.g. {first}. {HINTS.get(stage, 'Check the config')}"
        )
    )

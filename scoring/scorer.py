"""Scoring prepared rows: one ORT session and the rules that read its outputs. No I/O.

``Scorer`` takes groups of rows with their tensors (from a preprocessor) through the session in
batches (``inference``) and turns the outputs into Arrow columns, then any classifier columns
(``postprocess``). The shard loop (``worker``), ``scoring validate`` and the Python API all score
through it, so a row gets the same treatment everywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from scoring import embedding as embeddings
from scoring.embedding import Embedding
from scoring.inference import POOLED, Health, align, output_columns, run_groups, to_arrow
from scoring.model import ModelInfo
from scoring.postprocess import Postprocess
from scoring.record import Rejections
from scoring.session import Session, warm_up
from scoring.tensors import Group


@dataclasses.dataclass
class Scored:
    """What a chunk of rows gave: the prediction columns of the rows scored (``rows``, ascending
    indices into the chunk), the rows rejected by the session, and its time."""

    rows: np.ndarray
    fields: list[pa.Field]
    columns: list[pa.Array]
    rejected: Rejections
    infer_s: float = 0.0


def prediction_columns(
    model: ModelInfo,
    outputs: Mapping[str, str] | None,
    postprocess: Postprocess | None,
    embedding: Embedding | None,
) -> list[tuple[str, str]]:
    """The columns a ``Scorer`` adds to each row, in order, each with what adds it (for messages)."""
    cols = [(c, f"model output '{s.name}'") for c, s in _outputs(model, outputs, embedding).items()]
    if postprocess is not None:
        cols += [(f.name, "output.postprocess") for f in postprocess.fields()]
    if embedding is not None:
        cols.append((embeddings.COLUMN, "output.embedding"))
    return cols


def _outputs(model: ModelInfo, outputs: Mapping[str, str] | None, embedding: Embedding | None) -> dict:
    return output_columns(model, {} if outputs is None and embedding else outputs)


class Scorer:
    """Scores groups of rows with ``session``: ``outputs`` maps prediction columns to model
    outputs (``output.outputs``; None: every output, or none with an ``embedding``), then the
    ``postprocess`` and ``embedding`` columns. Raises ``ModelFailure`` at construction when the
    warm-up batch already shows an output that cannot be aligned with rows."""

    def __init__(
        self,
        model: ModelInfo,
        session: Session,
        outputs: Mapping[str, str] | None,
        postprocess: Postprocess | None,
        batch_size: int,
        embedding: Embedding | None = None,
    ) -> None:
        self.model, self.session, self.postprocess, self.batch_size = model, session, postprocess, batch_size
        self.embedding = embedding
        self.outputs = _outputs(model, outputs, embedding)
        pp = postprocess
        self.names = list(
            dict.fromkeys([*(s.name for s in self.outputs.values()), *([pp.output] if pp else [])])
        )
        self.health = Health()
        fetch = list(dict.fromkeys([*self.names, *([embedding.output] if embedding else [])]))
        rows, values = warm_up(session, model, fetch)
        if values is not None:
            aligned = align(values, fetch, model, rows, rows)  # ModelFailure names the output
            if pp is not None:  # the class count against the labels, before the first shard
                pp.columns(np.asarray(aligned[fetch.index(pp.output)]))

    def run(self, groups: Sequence[Group]) -> Scored:
        rows, values, rejected, infer_s = run_groups(
            self.session, self.model, groups, self.names, self.batch_size, self.health, self.embedding
        )
        fields, columns = [], []
        for col, spec in self.outputs.items():
            field, array = to_arrow(col, spec, values.get(spec.name, []))
            fields.append(field)
            columns.append(array)
        pp = self.postprocess
        if pp is not None:
            chunks = values.get(pp.output, [])
            scores = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)
            fields += pp.fields()
            columns += pp.columns(scores)
        if self.embedding is not None:
            chunks = values[POOLED]
            vectors = np.concatenate(chunks) if chunks else np.zeros((0, self._dim()), np.float32)
            field, array = self.embedding.column(vectors)
            fields.append(field)
            columns.append(array)
        return Scored(rows, fields, columns, rejected, infer_s)

    def _dim(self) -> int:
        """The embedding's size from the model's declaration, for a chunk with no row scored."""
        spec = next(o for o in self.model.outputs if o.name == self.embedding.output)  # type: ignore[union-attr]
        last = spec.shape[-1] if spec.shape else None
        return last if isinstance(last, int) and last > 0 else 0

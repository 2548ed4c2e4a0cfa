"""The Python API: ``run`` a job as ``scoring run`` does, or ``predict`` on any Ray Dataset.

``predict`` applies a job's rules — feeding, casting, shapes, outputs, postprocessing — through
the same ``Scorer``, as a Ray Data ``map_batches`` stage on an actor pool (one ORT session per
actor). It returns a lazy ``Dataset``: the ``keep`` columns, then the output columns.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from scoring.config import Config
from scoring.config_file import load_config
from scoring.errors import InputError, RowsRejected
from scoring.record import Rejections

if TYPE_CHECKING:
    import ray.data

    from scoring.job import JobResult
    from scoring.model import ModelInfo
    from scoring.postprocess import Postprocessor
    from scoring.preprocess import Preprocessor

WHERE = "the dataset"  # how messages name a Dataset's batches


def run(
    config: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    address: str | None = None,
    progress: bool = False,
) -> JobResult:
    """Run a job: ``config`` is a YAML file or the same tree as a dict; ``overrides`` maps dotted
    keys to values (``{"compute.batch_size": 512}``), above the file and the environment.

    Returns the ``JobResult`` (``.ok``, ``.job`` as in ``_job.json``, ``.records``, ``.out``).
    Raises ``ScoringError`` for what ``scoring run`` exits 2 on; a job that ran and failed or was
    interrupted returns with ``ok`` False. Prints nothing unless ``progress``: then what
    ``scoring run`` shows (a live bar on a terminal, lines elsewhere).
    """
    from scoring.job import run_job
    from scoring.progress import Lines, console_progress

    sets = [f"{key}={json.dumps(value)}" for key, value in (overrides or {}).items()]
    if isinstance(config, Mapping):
        cfg = load_config(data=json.loads(json.dumps(config)), overrides=sets)
    else:
        cfg = load_config(config, overrides=sets)
    if progress:
        return run_job(cfg, address=address, echo=print, progress=console_progress(print))
    return run_job(cfg, address=address, echo=_quiet, progress=Lines(_quiet))


def _quiet(_: str) -> None:
    """Where messages go when nobody asked for them."""


def predict(
    ds: ray.data.Dataset,
    model: str,
    *,
    columns: Mapping[str, str | list[str]] | None = None,
    keep: Sequence[str | Mapping[str, str]] = (),
    outputs: Mapping[str, str] | None = None,
    postprocess: Mapping[str, Any] | None = None,
    text: Mapping[str, Any] | None = None,
    embedding: Mapping[str, Any] | None = None,
    input_function: str | None = None,
    output_function: str | None = None,
    custom_ops: Sequence[str] = (),
    dims: Mapping[str, Sequence[int | str | None]] | None = None,
    batch_size: int = 256,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    providers: Sequence[str] | None = None,
    on_error: Literal["raise", "null"] = "raise",
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    max_restarts: int = 0,
) -> ray.data.Dataset:
    """Score every row of ``ds`` with ``model`` (a path or fsspec URI), lazily.

    ``columns``, ``keep``, ``outputs``, ``postprocess``, ``text`` and ``embedding`` mean what
    ``input.columns``, ``input.keep``, ``output.outputs``, ``output.postprocess``, ``input.text``
    and ``output.embedding`` mean in a job (``text={"column": "text", "tokenizer":
    "tokenizer.json"}``, ``embedding={"pooling": "mean"}``); ``input_function``,
    ``output_function``, ``custom_ops`` and ``dims`` what ``input.function``, ``output.function``,
    ``model.custom_ops`` and ``model.dims`` mean (a relative ``FILE.py`` is read from the current
    folder, here, and travels to the actors). ``actors``
    sessions (default: one per CPU left after one for reading, or one per GPU) of
    ``cpus_per_actor`` threads each. A row that cannot be scored raises with its reason, unless
    ``on_error="null"``: its outputs are null and an ``error`` column says why.

    Raises ``ScoringError`` (at once, before anything runs) for a model, key or column that cannot
    work; the schema is checked when the dataset knows it without reading. Ray and Ray Data print
    nothing (no progress bars, no start-up lines) unless ``progress``. ``max_restarts``: an actor
    that dies fails the Dataset with its reason (0), or is restarted (Ray Data's own default is
    -1, forever; Ray then logs an error-level warning as each actor starts, since Ray Data keeps
    its arguments in the object store).
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from scoring import cluster

    if not ray.is_initialized():  # as Ray Data would, but without its notices unless asked
        cluster.connect(None, quiet=not progress)
    _quiet_ray_data(DataContext.get_current(), progress)

    from scoring import postprocess as postprocessing
    from scoring import preprocess
    from scoring.exported import read_model
    from scoring.scorer import prediction_columns
    from scoring.spec import check_names

    so = dict(storage_options or {})
    inp = {
        "uri": WHERE,
        "format": "parquet",
        "columns": dict(columns or {}),
        "keep": [k if isinstance(k, str) else dict(k) for k in keep],
        "text": text,
        "function": input_function,
    }
    cfg = load_config(
        data={
            "model": {
                "uri": model,
                "custom_ops": list(custom_ops),
                "dims": {k: list(v) for k, v in (dims or {}).items()},
                **({"providers": list(providers)} if providers else {}),
            },
            "input": inp,
            "output": {
                "uri": WHERE,
                "outputs": outputs,
                "postprocess": postprocess,
                "embedding": embedding,
                "function": output_function,
            },
            "compute": {
                "batch_size": batch_size,
                "cpus_per_actor": cpus_per_actor,
                "gpus_per_actor": gpus_per_actor,
            },
            "storage_options": so,
        },
        environ={},
    )
    info = read_model(cfg.model, so)
    pps = tuple(postprocessing.resolve(cfg, info))
    errors = [("error", "on_error='null' (the reason a row was not scored)")] if on_error == "null" else []
    check_names(cfg.input.kept, prediction_columns(info, cfg.output.outputs, pps) + errors)
    schema = _known_schema(ds)
    # A user's function is read here, once, and travels to the actors (it needs no schema).
    pre = preprocess.resolve(cfg, info, pa.schema([]), WHERE) if input_function else None
    if schema is not None:
        if pre is None:
            preprocess.resolve(cfg, info, schema, WHERE)
        _check_keep(cfg.input.kept_columns, schema)
    if actors is None:
        resources = ray.cluster_resources()
        if gpus_per_actor:
            actors = max(1, int(resources.get("GPU", 0) / gpus_per_actor))
        else:  # one CPU left for the tasks that read the data (ray-project/ray#44687)
            actors = max(1, int((resources.get("CPU", 1) - 1) / cpus_per_actor))
    # The arguments travel inside the class, not as constructor arguments: Ray Data puts those
    # in the object store, and Ray then logs an error-level warning for a restartable actor.
    args = (cfg, info, pps, max(1, int(cpus_per_actor)), on_error, pre)
    bound = type("Predict", (_Predict,), {"args": args})
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for an actor's restarts; its catch-all is deprecated.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        scored = ds.map_batches(
            bound,
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor or None,
            max_restarts=max_restarts,
        )
    _quiet_ray_data(scored.context, progress)  # the dataset runs with its own copy of the context
    return scored


def _quiet_ray_data(ctx: Any, progress: bool) -> None:
    """Ray Data's bars and execution lines only when ``progress``."""
    import logging

    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = ctx.print_on_execution_start = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.ERROR)


def _known_schema(ds: Any) -> pa.Schema | None:
    """The dataset's Arrow schema when it is known without running it (a read's metadata)."""
    try:
        schema = ds.schema(fetch_if_missing=False)
    except Exception:  # Ray's schema API varies; the workers check every batch anyway
        return None
    base = getattr(schema, "base_schema", schema)
    return base if isinstance(base, pa.Schema) else None


def _check_keep(keep: Sequence[str], schema: pa.Schema) -> None:
    missing = [c for c in keep if c not in schema.names]
    if missing:
        raise InputError(f"{WHERE}: no column {missing} for keep (columns found: {schema.names})")


class _Predict:
    """The Ray Data UDF: one session, scoring each batch with a job's rules."""

    args: tuple[Config, ModelInfo, tuple[Postprocessor, ...], int, str, Preprocessor | None]

    def __init__(self) -> None:
        import ray

        cfg, info, pps, threads, on_error, pre = self.args
        from scoring.exported import local_model
        from scoring.runners import hide_gpus
        from scoring.scorer import Scorer
        from scoring.session import build_session

        gpu_ids = [int(g) for g in ray.get_gpu_ids()] if cfg.compute.gpus_per_actor > 0 else []
        hide_gpus(gpu_ids)
        path = local_model(info, cfg.storage_options)
        session = build_session(path, info, cfg.model, threads=threads, gpu_ids=gpu_ids)
        from scoring.constants import resolve

        constants = resolve(cfg.input.constants, info)
        self.scorer = Scorer(info, session, cfg.output.outputs, pps, cfg.compute.batch_size, constants)
        self.cfg, self.info, self.on_error = cfg, info, on_error
        self.preprocessors: dict[pa.Schema, Preprocessor] = {}
        self.function = pre  # input.function: one for every schema

    def __call__(self, batch: pa.Table) -> pa.Table:
        from scoring import preprocess

        pre = self.function or self.preprocessors.get(batch.schema)
        if pre is None:
            pre = self.preprocessors[batch.schema] = preprocess.resolve(
                self.cfg, self.info, batch.schema, WHERE
            )
            _check_keep(self.cfg.input.kept_columns, batch.schema)
        prepared = pre.prepare(batch, None, None)
        scored = self.scorer.run(prepared.groups)
        rejected = Rejections()
        rejected.extend(prepared.rejected)
        rejected.extend(scored.rejected)
        n = batch.num_rows
        if len(rejected) and self.on_error == "raise":
            raise RowsRejected(
                f"{rejected.count} row(s) of a batch of {n} cannot be scored; the first: "
                f"{rejected.first()}. Pass on_error='null' to keep them with null outputs "
                "and an error column"
            )
        position = np.full(n, -1, dtype=np.int64)
        position[scored.rows] = np.arange(len(scored.rows))
        take = pa.array(position, mask=position < 0)  # a null index gives a null output
        kept = self.cfg.input.kept
        columns = [batch.column(c) for _, c in kept] + [c.take(take) for c in scored.columns]
        fields = [batch.schema.field(c).with_name(name) for name, c in kept] + scored.fields
        if self.on_error == "null":
            columns.append(_errors(rejected, n))
            fields.append(pa.field("error", pa.string()))
        return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _errors(rejected: Rejections, n: int) -> pa.Array:
    messages: list[str | None] = [None] * n
    for _, start, stop, reason in rejected.ranges:
        for row in range(max(start, 0), stop):
            messages[row] = f"{reason.stage}: {reason.message}"
    return pa.array(messages, pa.string())

"""scoring: run ONNX models over big datasets, on Ray or in this process.

Importing this package imports nothing heavy (no Ray, ONNX Runtime, PIL or s3fs); the stages
import what they need when they run. The Python API (README "Python API")::

    result = scoring.run("configs/x.yaml", overrides={"compute.batch_size": 512})
    scored = scoring.predict(ray.data.read_parquet(...), model="model.onnx", keep=["id"])
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import ray.data

    from scoring.job import JobResult

__version__ = "0.1.0"
__all__ = ["run", "predict", "__version__"]


def run(
    config: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    address: str | None = None,
    echo: Any = print,
) -> JobResult:
    """Run a job as ``scoring run`` does; see ``scoring.api.run``."""
    from scoring.api import run as run_

    return run_(config, overrides, address=address, echo=echo)


def predict(
    ds: ray.data.Dataset,
    model: str,
    *,
    columns: Mapping[str, str | list[str]] | None = None,
    keep: Sequence[str] = (),
    outputs: Mapping[str, str] | None = None,
    postprocess: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    providers: Sequence[str] | None = None,
    on_error: Literal["raise", "null"] = "raise",
    storage_options: Mapping[str, Any] | None = None,
) -> ray.data.Dataset:
    """Score every row of a Ray Dataset with a job's rules, lazily; see ``scoring.api.predict``."""
    from scoring.api import predict as predict_

    return predict_(
        ds,
        model,
        columns=columns,
        keep=keep,
        outputs=outputs,
        postprocess=postprocess,
        batch_size=batch_size,
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor,
        providers=providers,
        on_error=on_error,
        storage_options=storage_options,
    )

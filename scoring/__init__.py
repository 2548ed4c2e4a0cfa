"""scoring: run ONNX models over big datasets, on Ray or in this process.

Importing this package imports nothing heavy (no Ray, ONNX Runtime, PIL or s3fs); the stages
import what they need when they run, and ``run`` and ``predict`` load on first use (docs/api.md)::

    result = scoring.run("configs/x.yaml", overrides={"compute.batch_size": 512})
    scored = scoring.predict(ray.data.read_parquet(...), model="model.onnx", keep=["id"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoring.api import predict, run

__version__ = "0.1.0"
__all__ = ["run", "predict", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("run", "predict"):
        from scoring import api

        return getattr(api, name)
    raise AttributeError(f"module 'scoring' has no attribute {name!r}")

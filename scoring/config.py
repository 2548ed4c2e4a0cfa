"""Job configuration: one typed tree, validated on the driver before Ray starts.

Precedence, lowest first: defaults < the YAML file < environment (``SCORING_<SECTION>__<KEY>``,
e.g. ``SCORING_COMPUTE__BATCH_SIZE=512``) < ``--set section.key=value``. Values from the
environment and ``--set`` are parsed as YAML scalars, so ``--set compute.actors=4`` is an int.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scoring.errors import ConfigError

ENV_PREFIX = "SCORING_"


def _registered(name: str, registry: Mapping[str, Any]) -> str:
    if name not in registry:
        raise ValueError(f"expected one of {', '.join(registry)}")
    return name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CudaOptions(_Section):
    # "HEURISTIC" avoids the exhaustive cuDNN search that every new input shape triggers.
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    # "kSameAsRequested" keeps the arena from doubling past what a batch needs.
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kSameAsRequested"
    gpu_mem_limit: int | None = Field(default=None, gt=0, description="bytes")


class TensorrtOptions(_Section):
    engine_cache_path: str | None = None  # default: ~/.cache/scoring/trt
    fp16: bool = False


class ModelConfig(_Section):
    uri: str
    providers: list[Literal["cuda", "tensorrt", "cpu"]] | None = None
    allow_cpu_fallback: bool = False
    optimization: Literal["disable", "basic", "extended", "all"] = "all"
    intra_op_threads: int | Literal["auto"] = "auto"
    io_binding: bool | Literal["auto"] = "auto"
    cuda: CudaOptions = CudaOptions()
    tensorrt: TensorrtOptions = TensorrtOptions()

    @field_validator("intra_op_threads")
    @classmethod
    def _positive_threads(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("expected 'auto' or an integer >= 1")
        return v


class ImageConfig(_Section):
    size: tuple[int, int] | None = None
    resize: Literal["stretch", "center_crop", "letterbox"] = "stretch"
    resize_short_side: int | None = Field(default=None, gt=0)
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    mode: Literal["RGB", "BGR", "L"] = "RGB"
    layout: Literal["NCHW", "NHWC"] | None = None
    scale: float = 1.0 / 255.0
    mean: list[float] = [0.0]
    std: list[float] = [1.0]

    @field_validator("size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError("expected [height, width] of positive integers")
        return v

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, v: list[float]) -> list[float]:
        if any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v


class TextConfig(_Section):
    column: str = "text"  # a string column (webdataset: the txt member)
    tokenizer: str  # a Hugging Face tokenizers file (tokenizer.json), local or any fsspec URI
    # Tokens per row; longer rows are truncated. Default: the tokenizer's own truncation, else 512.
    max_length: int | None = Field(default=None, gt=0)


class InputConfig(_Section):
    uri: str
    format: str  # a key of scoring.formats.INPUTS: parquet | images | webdataset | delta | iceberg
    columns: dict[str, str | list[str]] = {}
    # Columns copied to the predictions: a name, or {new_name: column} to keep it under another
    # name (a column named like one scoring adds: file, row, shard, path, an output's).
    keep: list[str | dict[str, str]] = []
    # At most this many files in a shard: image files, or small Parquet files packed together.
    files_per_shard: int = Field(default=1024, gt=0)
    # Parquet files with more rows are split at row-group boundaries into shards of about this
    # many rows, so one big file is scored by every actor instead of one; files far smaller
    # (under a sixteenth) are packed together into shards of about this many rows.
    rows_per_shard: int = Field(default=1_000_000, gt=0)
    # Parquet: the column of encoded images (binary, or Hugging Face's struct<bytes, path>);
    # webdataset: a member's extension ("image": the first of jpg, jpeg, png, webp).
    image_column: str = "image"
    image: ImageConfig = ImageConfig()
    text: TextConfig | None = None  # text models: tokenize this column (see README "Text models")
    # Tables (delta, iceberg): the version read — delta: a table version or a timestamp; iceberg: a
    # snapshot id or a timestamp; "latest". Unset: the latest on a first run, the version the plan
    # pinned on a resume (README "Lakehouse tables").
    version: int | str | None = None
    # iceberg: pyiceberg catalog properties (name: default, type: sql | rest | glue | hive, uri,
    # warehouse, ...), with input.uri the table's name (db.table).
    catalog: dict[str, Any] | None = None

    @field_validator("keep")
    @classmethod
    def _renames(cls, v: list[str | dict[str, str]]) -> list[str | dict[str, str]]:
        for item in v:
            if isinstance(item, dict) and len(item) != 1:
                raise ValueError(f"expected a column name or one {{new_name: column}} per item, found {item}")
        return v

    @property
    def kept(self) -> list[tuple[str, str]]:
        """``input.keep`` as ``(name in the predictions, input column)`` pairs, in order."""
        return [(item, item) if isinstance(item, str) else next(iter(item.items())) for item in self.keep]

    @property
    def kept_columns(self) -> list[str]:
        """The input columns ``input.keep`` reads."""
        return list(dict.fromkeys(column for _, column in self.kept))

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from scoring.formats import INPUTS  # the registry; imported when a config is checked

        return _registered(v, INPUTS)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 0:
            raise ValueError("expected a version (an integer >= 0), a timestamp or 'latest'")
        return v


class PostprocessConfig(_Section):
    output: str | None = None  # default: the only float output of shape [N, C]
    softmax: bool = False  # logits -> probabilities first
    top_k: int = Field(default=1, ge=1)
    # A URI of a text file (one label per line), a list, or metadata:KEY (the model's metadata).
    labels: str | list[str] | None = None


class EmbeddingConfig(_Section):
    output: str | None = None  # default: the only float output shaped [N, T, D] or [N, D]
    pooling: Literal["mean", "cls", "max", "none"] = "mean"  # mean: over the attention mask
    normalize: bool = True  # L2-normalise each vector


class OutputConfig(_Section):
    uri: str
    mode: Literal["error", "overwrite", "resume"] = "error"
    # parquet: OUT/predictions/ as files; delta: OUT/predictions/ is a Delta table; iceberg: the
    # files are committed into output.table of output.catalog (README "Predictions as a table").
    format: str = "parquet"
    table: str | None = None  # iceberg: namespace.table, created when absent
    catalog: dict[str, Any] | None = None  # iceberg: pyiceberg catalog properties, as input.catalog
    # None: every output (none with output.embedding); {}: none (postprocess or embedding columns only)
    outputs: dict[str, str] | None = None
    postprocess: PostprocessConfig | None = None
    embedding: EmbeddingConfig | None = None  # sentence embeddings: the column `embedding`

    @field_validator("format")
    @classmethod
    def _known_output(cls, v: str) -> str:
        from scoring.outputs import OUTPUTS  # the registry; imported when a config is checked

        return _registered(v, OUTPUTS)


class ComputeConfig(_Section):
    @field_validator("cpus_per_actor")
    @classmethod
    def _positive_cpus(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v <= 0:
            raise ValueError("expected 'auto' or a number > 0")
        return v

    # ray: Ray actors (a cluster, or a Ray started here); local: threads of this process, no Ray.
    runner: Literal["ray", "local"] = "ray"
    actors: int | None = Field(default=None, gt=0)
    # CPUs each worker reserves: its ORT threads on CPU, its decode threads for images. auto: 1
    # for CPU workers; for GPU workers, their share of a GPU node's CPUs (to keep the GPU fed).
    cpus_per_actor: float | Literal["auto"] = "auto"
    gpus_per_actor: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=256, gt=0)
    # Shards an actor holds at once: one at the session while the next is fetched and the one
    # before is uploaded. 1 = one at a time, least memory (a remote shard is held whole).
    shards_in_flight: int = Field(default=2, ge=1)
    # A job with shards left and no worker ready for this long stops (failed): no node could host
    # one, or the autoscaler never launched one. Workers still waiting never hold shards back.
    placement_timeout_s: float = Field(default=600.0, gt=0)


class ErrorsConfig(_Section):
    max_rejected_rows: int = Field(default=1000, ge=0)


class Config(_Section):
    model: ModelConfig
    input: InputConfig
    output: OutputConfig
    compute: ComputeConfig = ComputeConfig()
    errors: ErrorsConfig = ErrorsConfig()
    storage_options: dict[str, Any] = {}


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    data: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build a validated ``Config`` from a YAML file (or ``data``), environment and overrides.

    Raises ``ConfigError`` naming the key, what was expected and what was found.
    """
    tree: dict[str, Any] = dict(data or {})
    if path is not None:
        tree = _read_yaml(Path(path))
    env = os.environ if environ is None else environ
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and "__" in name:
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_dotted(tree, dotted, _parse_scalar(value), source=f"environment {name}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. compute.batch_size=512), found {item!r}")
        _set_dotted(tree, key.strip(), _parse_scalar(value), source=f"--set {item}")
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top, found {type(tree).__name__}")
    return tree


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{source}: config key '{where}' holds a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(f"unknown config key '{key}'; check its spelling against README's config reference")
        elif kind == "missing":
            lines.append(f"missing required config key '{key}'")
        else:
            lines.append(f"config key '{key}': {err['msg'].lower()}, found {err.get('input')!r}")
    return "invalid config:\n  " + "\n  ".join(lines)

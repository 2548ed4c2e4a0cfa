"""Job configuration: one typed tree of sections, validated on the driver before anything starts.

Each input and output format declares its own section (``Options``) and each postprocessor its
key under ``output``; ``scoring.config_file`` reads a file, the environment and ``--set`` into it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    create_model,
    field_validator,
)

from scoring import registry


def _registered(name: str, names: Mapping[str, Any]) -> str:
    if name not in names:
        raise ValueError(f"expected one of {', '.join(names)}")
    return name


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CudaOptions(Section):
    # "HEURISTIC" avoids the exhaustive cuDNN search that every new input shape triggers.
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    # "kSameAsRequested" keeps the arena from doubling past what a batch needs.
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kSameAsRequested"
    gpu_mem_limit: int | None = Field(default=None, gt=0, description="bytes")


class TensorrtOptions(Section):
    engine_cache_path: str | None = None  # default: ~/.cache/scoring/trt
    fp16: bool = False


class ModelConfig(Section):
    uri: str = Field(description="local path or fsspec URI of the .onnx file")
    providers: list[Literal["cuda", "tensorrt", "cpu"]] | None = Field(
        default=None,
        description="execution providers in order of preference; default: [cuda, cpu] on GPU workers, "
        "[cpu] on CPU workers (GPU providers are never used by CPU workers)",
    )
    allow_cpu_fallback: bool = Field(
        default=False,
        description="a GPU worker whose session lands on CPU fails unless true; a fallback is recorded "
        "in _job.json (cpu_fallback) and _shards.parquet (device)",
    )
    optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ONNX Runtime's graph optimisation level"
    )
    intra_op_threads: int | Literal["auto"] = Field(
        default="auto",
        description="auto: the CPUs reserved per worker (ONNX Runtime ignores OMP_NUM_THREADS)",
    )
    io_binding: bool | Literal["auto"] = Field(
        default="auto", description="bind inputs and outputs through ORT IO binding; auto: on CUDA only"
    )
    custom_ops: list[str] = Field(
        default=[],
        description="custom-operator libraries registered in every session: onnxruntime_extensions, or "
        "a local path to a shared library (never a URI)",
    )
    dims: dict[str, list[int | str | None]] = Field(
        default={},
        description="input (or output) -> its dims, replacing the declared ones before the session is "
        "made: a name makes a dim symbolic (e.g. {input.1: [batch, 3, height, width]}); the file is "
        "not changed",
    )
    cuda: CudaOptions = Field(default=CudaOptions(), description="CUDA provider options")
    tensorrt: TensorrtOptions = Field(default=TensorrtOptions(), description="TensorRT provider options")

    @field_validator("intra_op_threads")
    @classmethod
    def _positive_threads(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("expected 'auto' or an integer >= 1")
        return v


class ImageConfig(Section):
    size: tuple[int | None, int | None] | None = Field(
        default=None,
        description="[height, width] fed to the model; default: the input's static size; a null dim "
        "(dynamic models) is the other dim times the source's aspect, rounded up to multiple_of",
    )
    multiple_of: int = Field(
        default=32, gt=0, description="a null dim of size is rounded up to a multiple of this"
    )
    resize: Literal["stretch", "center_crop", "letterbox"] = Field(
        default="stretch",
        description="stretch; center_crop (short side to resize_short_side, then crop); letterbox (fit, pad)",
    )
    resize_short_side: int | None = Field(
        default=None, gt=0, description="for center_crop; default: the short side of size"
    )
    anchor: Literal["center", "top_left"] = Field(
        default="center", description="letterbox: where the image sits in the padded input"
    )
    pad_value: int = Field(default=114, ge=0, le=255, description="letterbox: the padding's value")
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = Field(
        default="bilinear", description="the resize's resampling filter"
    )
    mode: Literal["RGB", "BGR", "L"] = Field(default="RGB", description="channels fed to the model")
    layout: Literal["NCHW", "NHWC"] | None = Field(
        default=None, description="default: read off the model input's shape"
    )
    scale: float = Field(default=1.0 / 255.0, description="pixel values are multiplied by this first")
    mean: list[float] = Field(default=[0.0], description="then this is subtracted, per channel")
    std: list[float] = Field(default=[1.0], description="then divided by this, per channel")

    @field_validator("size")
    @classmethod
    def _positive_size(cls, v: tuple[int | None, int | None] | None) -> tuple[int | None, int | None] | None:
        if v is not None and any(d is not None and d < 1 for d in v):
            raise ValueError("expected [height, width] of positive integers (or null)")
        return v

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, v: list[float]) -> list[float]:
        if any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v


class TextConfig(Section):
    column: str = Field(default="text", description="a string column (webdataset: the txt member)")
    tokenizer: str = Field(
        description="a Hugging Face tokenizers file (tokenizer.json), local or any fsspec URI"
    )
    max_length: int | None = Field(
        default=None,
        gt=0,
        description="tokens per row, longer rows truncated; default: the tokenizer's own, else 512",
    )


Constant = float | int | list[Any] | Literal["zeros"]


class InputConfig(Section):
    """The keys every input has. A format with keys of its own (a table's version, a catalog)
    declares a subclass, named in ``scoring.registry``; ``load_config`` validates the section with
    it, so a key that only some formats take is refused, by name, for the others."""

    uri: str = Field(description="a folder (searched recursively), a file, or a glob; local or fsspec")
    format: str = Field(
        description="parquet | images | audio | webdataset | delta | iceberg (scoring.registry.INPUTS)"
    )
    columns: dict[str, str | list[str]] = Field(
        default={},
        description="model input -> column, or -> [col, ...] stacked into [N, k]; default: same names",
    )
    keep: list[str | dict[str, str]] = Field(
        default=[],
        description="columns copied to the predictions: a name, or {new_name: column} (a column named "
        "like one scoring adds is refused)",
    )
    files_per_shard: int = Field(
        default=1024, gt=0, description="at most this many files in a shard (image files, small files)"
    )
    # Big files split so that one is scored by every worker; small ones packed to save per-file work.
    rows_per_shard: int = Field(
        default=1_000_000,
        gt=0,
        description="Parquet files with more rows are split at row groups into shards of about this "
        "many rows; files with under a sixteenth of it are packed together",
    )
    image_column: str = Field(
        default="image",
        description="Parquet: the column of encoded images (binary, or Hugging Face's struct<bytes, "
        "path>); webdataset: a member extension (image: the first of jpg, jpeg, png, webp)",
    )
    image: ImageConfig = Field(default=ImageConfig(), description="image preprocessing")
    text: TextConfig | None = Field(default=None, description="text models: tokenize this column")
    constants: dict[str, Constant] = Field(
        default={},
        description="model input -> one value for every batch: a number, a nested list, or zeros "
        "(the declared shape, its batch dim set to the batch's rows); no column feeds these inputs",
    )
    function: str | None = Field(
        default=None,
        description="FILE.py:NAME (relative to the config file's folder; local or any URI) or "
        "package.module:NAME: prepare(batch: pyarrow.Table) -> dict of arrays replaces the built-in "
        "preprocessing (docs/models/functions.md)",
    )

    @field_validator("keep")
    @classmethod
    def _renames(cls, v: list[str | dict[str, str]]) -> list[str | dict[str, str]]:
        for item in v:
            if isinstance(item, dict) and len(item) != 1:
                raise ValueError(f"expected a column name or one {{new_name: column}} per item, found {item}")
        return v

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        return _registered(v, registry.INPUTS)

    @property
    def kept(self) -> list[tuple[str, str]]:
        """``input.keep`` as ``(name in the predictions, input column)`` pairs, in order."""
        return [(item, item) if isinstance(item, str) else next(iter(item.items())) for item in self.keep]

    @property
    def kept_columns(self) -> list[str]:
        """The input columns ``input.keep`` reads."""
        return list(dict.fromkeys(column for _, column in self.kept))

    @property
    def data(self) -> str:
        """What a row holds for the model, by default: its preprocessor's name."""
        return registry.INPUTS[self.format].data


class OutputConfig(Section):
    """The keys every output has. An output format with keys of its own declares a subclass
    (``Options`` of its class in ``scoring.registry.OUTPUTS``), as inputs do; each postprocessor
    adds its section (its module's ``Config``) under its key (``output_options``)."""

    uri: str = Field(description="local path or fsspec URI of the folder holding the job")
    mode: Literal["error", "overwrite", "resume"] = Field(
        default="error", description="what to do when the folder already holds a job"
    )
    format: str = Field(
        default="parquet",
        description="parquet: predictions/ as files; delta: predictions/ is a Delta table; iceberg: "
        "committed into output.table",
    )
    outputs: dict[str, str] | None = Field(
        default=None,
        description="column -> model output; default: every output under its own name (none with a "
        "postprocessor that replaces them); {}: none",
    )

    @field_validator("format")
    @classmethod
    def _known_output(cls, v: str) -> str:
        return _registered(v, registry.OUTPUTS)

    def __reduce__(self) -> tuple[Any, ...]:
        # Its class is made when a config is loaded (the postprocessors' sections): a process
        # that unpickles it makes it again, from the keys that were set.
        return (_output_section, (self.model_dump(mode="json", exclude_unset=True),))


class ComputeConfig(Section):
    @field_validator("cpus_per_actor")
    @classmethod
    def _positive_cpus(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v <= 0:
            raise ValueError("expected 'auto' or a number > 0")
        return v

    @field_validator("runner")
    @classmethod
    def _known_runner(cls, v: str) -> str:
        return _registered(v, registry.RUNNERS)

    runner: str = Field(
        default="ray",
        description="ray: Ray actors (a cluster, or a Ray started here); local: threads of this process",
    )
    actors: int | None = Field(
        default=None, gt=0, description="workers; default: one per GPU, else CPUs / cpus_per_actor"
    )
    # A worker's own threads read, decode and run ORT: its CPUs are all its work needs.
    cpus_per_actor: float | Literal["auto"] = Field(
        default="auto",
        description="CPUs each worker reserves; auto: 1 on CPU, a GPU node's share on GPU workers",
    )
    gpus_per_actor: float = Field(
        default=0.0, ge=0, description="> 0 pins each worker to a GPU or a fraction of one"
    )
    batch_size: int = Field(default=256, gt=0, description="rows per ONNX Runtime call")
    # One shard at the session while the next is read and the one before written.
    shards_in_flight: int = Field(
        default=2, ge=1, description="shards a worker holds at once; 1: least memory"
    )
    placement_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="with shards left and no worker ready for this long, the job stops (failed)",
    )


class ErrorsConfig(Section):
    max_rejected_rows: int = Field(
        default=1000, ge=0, description="past this the job stops, status failed, exit 1"
    )


class Config(Section):
    model: ModelConfig
    # SerializeAsAny: a format's own keys (a subclass's) are dumped too: the plan and _job.json.
    input: SerializeAsAny[InputConfig]
    output: SerializeAsAny[OutputConfig]
    compute: ComputeConfig = ComputeConfig()
    errors: ErrorsConfig = ErrorsConfig()
    storage_options: dict[str, Any] = Field(
        default={}, description="passed to fsspec for every URI (endpoint_url, key, secret, ...)"
    )


def input_options(name: str | None) -> type[InputConfig]:
    """The input section's class for ``input.format`` ``name``: the first of its formats' own
    (``Options``), or the common keys for an unknown name (refused by its own validator)."""
    entry = registry.INPUTS.get(name or "")
    if entry is None:
        return InputConfig
    return getattr(registry.load(registry.FORMATS[entry.formats[0]]), "Options", InputConfig)  # type: ignore[no-any-return]


@functools.cache
def output_options(name: str | None) -> type[OutputConfig]:
    """The output section's class for ``output.format`` ``name``: its class's ``Options`` (or the
    common keys), with every postprocessor's section under its key."""
    path = registry.OUTPUTS.get(name or "parquet")
    base = OutputConfig if path is None else getattr(registry.load(path), "Options", OutputConfig)
    sections: dict[str, Any] = {}
    for key, module in registry.POSTPROCESSORS.items():
        loaded = registry.load(module)
        doc = (loaded.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        sections[key] = (loaded.Config | None, Field(default=None, description=doc))
    return create_model(base.__name__, __base__=base, __module__=base.__module__, **sections)  # type: ignore[no-any-return]


def _output_section(data: dict[str, Any]) -> OutputConfig:
    return output_options(data.get("format")).model_validate(data)

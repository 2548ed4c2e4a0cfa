"""The ONNX Runtime session: providers, threads, graph optimisation, warm-up and running.

Built inside each actor (never on the driver). Which providers a session really got is checked
after it is built, because ORT quietly builds a CPU session when CUDA libraries fail to load.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from scoring.config import ModelConfig
from scoring.constants import Constants
from scoring.errors import ModelError, ProviderError, translated
from scoring.exported import libraries, session_model, takes_encoded_bytes
from scoring.model import ModelInfo

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = ("cuda", "tensorrt")
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
INSTALL_HINT = (
    "Install the GPU build (pip install 'scoring[gpu]', which brings onnxruntime-gpu "
    "in place of onnxruntime) and make sure the CUDA 12 and cuDNN 9 libraries it "
    "needs can be loaded (pip install 'onnxruntime-gpu[cuda,cudnn]' ships them)"
)


def requested_providers(cfg: ModelConfig, on_gpu: bool) -> list[str]:
    """The provider preference list for an actor; GPU providers only where a GPU is held."""
    names: list[str]
    if cfg.providers:
        names = list(cfg.providers)
    else:
        names = ["cuda", "cpu"] if on_gpu else ["cpu"]
    if not on_gpu:
        names = [n for n in names if n not in GPU_PROVIDERS] or ["cpu"]
    return names


@dataclasses.dataclass
class Session:
    """One ORT session and what it really runs on."""

    sess: Any
    providers: list[str]  # what ORT reports it uses, e.g. ["CPUExecutionProvider"]
    device: str  # "cpu", "cuda:0" ...
    fallback: str | None  # why a GPU actor runs on CPU, when allowed
    io_binding: bool
    warmup_error: str | None = None

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        if not self.io_binding:
            return list(self.sess.run(output_names, feed))
        binding = self.sess.io_binding()
        for name, arr in feed.items():
            binding.bind_cpu_input(name, arr)
        for name in output_names:
            binding.bind_output(name, "cpu")
        self.sess.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())


def build_session(
    path: str, info: ModelInfo, cfg: ModelConfig, *, threads: int, gpu_ids: list[int], device_id: int = 0
) -> Session:
    """Build a session for the model at ``path`` with ``threads`` intra-op threads.

    ``gpu_ids`` are the GPUs this worker holds (empty for CPU workers), as Ray numbers them;
    ``device_id`` is the one CUDA sees in this process (0 in a Ray actor, whose
    ``CUDA_VISIBLE_DEVICES`` Ray sets; the GPU's own index in the local runner). Raises
    ``ProviderError`` when a GPU was asked for but the session landed on CPU, unless
    ``cfg.allow_cpu_fallback``; ``ModelError`` when ORT cannot load the model.
    """
    import onnxruntime as ort

    on_gpu = bool(gpu_ids)
    names = requested_providers(cfg, on_gpu)
    available = set(ort.get_available_providers())
    providers = [_provider_entry(n, cfg, device_id) for n in names if PROVIDER_NAMES[n] in available]
    opts = ort.SessionOptions()
    # ORT's thread pool ignores OMP_NUM_THREADS and starts one thread per core by default,
    # so every actor on a node would oversubscribe it: pin it to the CPUs Ray reserved.
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[cfg.optimization])
    # Fatal only: a failed run raises, and scoring reports it with the rows (and stops on a model
    # problem); missing-provider warnings are checked below instead.
    opts.log_severity_level = 4
    if on_gpu:
        # The CPU threads of a GPU session mostly wait; spinning while they wait would take the
        # CPUs that decode images and feed the GPU.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for library in libraries(cfg):  # model.custom_ops
        opts.register_custom_ops_library(library)
    model, data_folder = session_model(path, cfg)  # model.dims: the graph rewritten, as bytes
    if data_folder is not None:
        # ORT reads external data beside a model loaded from a path only, unless told where.
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", data_folder)
    with translated(ModelError, f"ONNX Runtime could not load {info.uri}"):
        sess = ort.InferenceSession(model, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    got = list(sess.get_providers())
    device, fallback = _check_providers(names, got, available, cfg, gpu_ids)
    use_binding = cfg.io_binding is True or (cfg.io_binding == "auto" and device.startswith("cuda"))
    return Session(sess, got, device, fallback, use_binding)


def _provider_entry(name: str, cfg: ModelConfig, device_id: int) -> Any:
    if name == "cuda":
        opts: dict[str, Any] = {
            "device_id": device_id,
            "cudnn_conv_algo_search": cfg.cuda.cudnn_conv_algo_search,
            "arena_extend_strategy": cfg.cuda.arena_extend_strategy,
        }
        if cfg.cuda.gpu_mem_limit:
            opts["gpu_mem_limit"] = cfg.cuda.gpu_mem_limit
        return ("CUDAExecutionProvider", opts)
    if name == "tensorrt":
        from scoring.model import cache_dir

        path = cfg.tensorrt.engine_cache_path or str(cache_dir() / "trt")
        return (
            "TensorrtExecutionProvider",
            {
                "device_id": device_id,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": path,
                "trt_fp16_enable": cfg.tensorrt.fp16,
            },
        )
    return "CPUExecutionProvider"


def _check_providers(
    names: list[str], got: list[str], available: set[str], cfg: ModelConfig, gpu_ids: list[int]
) -> tuple[str, str | None]:
    gpu_wanted = [PROVIDER_NAMES[n] for n in names if n in GPU_PROVIDERS]
    if not gpu_wanted or any(p in got for p in gpu_wanted):
        # Named by the GPU Ray assigned on this node; inside the actor it is device 0.
        return (f"cuda:{gpu_ids[0]}" if gpu_wanted else "cpu"), None
    missing = [p for p in gpu_wanted if p not in available]
    why = (
        f"this onnxruntime build has no {', '.join(missing)} (available: {sorted(available)})"
        if missing
        else "ORT could not initialise it (CUDA or cuDNN libraries failed to load)"
    )
    reason = f"the actor holds GPU {gpu_ids} and asked for {gpu_wanted}, but the session got {got}: {why}"
    if not cfg.allow_cpu_fallback:
        raise ProviderError(
            f"{reason}. {INSTALL_HINT}; or set model.allow_cpu_fallback: true to score on CPU anyway."
        )
    log.warning("falling back to CPU: %s", reason)
    return "cpu-fallback", reason


# Two rows, not one: an output that puts the batch on another axis ([1, N] where [N, 1] is
# declared) looks right for a batch of one.
WARMUP_ROWS = 2


def warm_up(
    session: Session, info: ModelInfo, names: list[str], constants: Constants | None = None
) -> tuple[int, list[Any] | None]:
    """Run one synthetic batch so the first real batch does not pay for allocation and kernel
    selection. Returns its row count and outputs; None (and ``session.warmup_error`` says why)
    when the model rejects the synthetic rows (zeros, empty strings), which is not a failure."""
    if takes_encoded_bytes(info):
        # Fed a row's encoded bytes: made-up bytes may not be refused but end the process (a
        # libjpeg in onnxruntime-extensions exits on bytes that are no JPEG), so no warm-up.
        return 0, None
    fixed = info.inputs[0].batch_dim if info.inputs else None
    rows = fixed if isinstance(fixed, int) and fixed > 0 else WARMUP_ROWS
    feed = {}
    for spec in info.inputs:
        row = [d if isinstance(d, int) and d > 0 else 1 for d in spec.row_shape]
        shape = [rows, *row] if spec.shape is not None else [rows]
        if spec.dtype == "str":
            feed[spec.name] = np.full(shape, "", dtype=object)
        else:
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
    if constants is not None:
        feed.update(constants.feed(rows))
    try:
        return rows, session.run(names, feed)
    except Exception as exc:  # a warm-up failure is not a scoring failure; it is reported
        session.warmup_error = f"{type(exc).__name__}: {exc}"
        return rows, None

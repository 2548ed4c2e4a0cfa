"""``scoring demo``: a small model and datasets made on the spot, scored locally.

The builders here (an MLP and a small CNN made with ``onnx.helper``, Parquet tables and a JPEG
folder) also serve ``make bench``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


def make_mlp(path: str | Path, sizes: tuple[int, ...] = (64, 256, 256, 10), seed: int = 0) -> str:
    """An MLP ``x [N, sizes[0]] -> probs [N, sizes[-1]]`` (ReLU between layers, softmax last)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"]))
        prev = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return _save(graph, path)


def make_cnn(path: str | Path, size: int = 224, classes: int = 10, seed: int = 0) -> str:
    """A small CNN ``image [N, 3, size, size] -> probs [N, classes]``: two strided convs, pool, dense."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    inits = [
        w("c1", (8, 3, 3, 3)),
        w("c2", (16, 8, 3, 3)),
        w("fc", (16, classes)),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fcb"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "c1"], ["a1"], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2"], ["a2"], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _save(graph, path)


def make_text_model(
    path: str | Path, vocab: int, dim: int = 16, int_type: str = "int64", seed: int = 0
) -> str:
    """A tiny BERT-like encoder: ``input_ids``, ``attention_mask``, ``token_type_ids``
    [batch, sequence] -> ``last_hidden_state`` [batch, sequence, dim]. Each token's state mixes in
    the mean of the sequence's unmasked tokens, so padding that were not masked would show."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    ids = TensorProto.INT64 if int_type == "int64" else TensorProto.INT32

    def table(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    axes1, axes2 = (numpy_helper.from_array(np.array([a], np.int64), f"axis{a}") for a in (1, 2))
    nodes = [
        helper.make_node("Gather", ["words", "input_ids"], ["w"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["w", "t"], ["h0"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        helper.make_node("Mul", ["h0", "m3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "axis1"], ["total"], keepdims=1),
        helper.make_node("ReduceSum", ["m3", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["total", "count"], ["context"]),
        helper.make_node("Add", ["h0", "context"], ["h1"]),
        helper.make_node("MatMul", ["h1", "dense"], ["h2"]),
        helper.make_node("Tanh", ["h2"], ["last_hidden_state"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-bert",
        [helper.make_tensor_value_info(n, ids, ["batch", "sequence"]) for n in TEXT_INPUTS],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", dim])],
        [table("words", vocab, dim), table("types", 2, dim), table("dense", dim, dim), axes1, axes2],
    )
    return _save(graph, path)


def make_tokenizer(path: str | Path, sentences: list[str], vocab: int = 120) -> str:
    """A WordPiece tokenizer trained on ``sentences``, with BERT's special tokens around each text
    (``[CLS] … [SEP]``), saved as a Hugging Face tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab, special_tokens=special, show_progress=False)
    tok.train_from_iterator(sentences, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.save(str(path))
    return str(path)


def sentences(count: int, seed: int = 0, longest: int = 60) -> list[str]:
    """Sentences of 1 to ``longest`` words (lengths spread log-uniformly, as real text's are)."""
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(0, np.log(longest), count)).astype(int)
    return [" ".join(rng.choice(WORDS, n)) + "." for n in lengths]


WORDS = (
    "the a model scores every row of data on a cluster with many nodes and a laptop while people "
    "wait for results written back as parquet files in object storage or on local disk quickly"
).split()
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _save(graph: onnx.GraphProto, path: str | Path) -> str:
    """Save ``graph`` as an opset-17 model (IR 8, which every onnxruntime >= 1.16 loads)."""
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="scoring-demo"
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def write_tables(folder: str | Path, files: int, rows: int, features: int, seed: int = 0) -> list[str]:
    """``files`` Parquet files of ``rows`` rows: ``id`` int64 and ``features`` fixed_size_list<float32>."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(files):
        x = rng.standard_normal((rows, features), dtype=np.float32)
        feats = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), features)
        ids = pa.array(np.arange(i * rows, (i + 1) * rows, dtype=np.int64))
        path = os.path.join(folder, f"part-{i:03d}.parquet")
        pq.write_table(pa.table({"id": ids, "features": feats}), path, row_group_size=64 * 1024)
        paths.append(path)
    return paths


def write_texts(folder: str | Path, files: int, rows: int, seed: int = 0) -> list[str]:
    """``files`` Parquet files of ``rows`` rows: ``id`` int64 and ``text`` (1 to 60 words)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    texts = sentences(files * rows, seed=seed)
    for i in range(files):
        part = slice(i * rows, (i + 1) * rows)
        ids = np.arange(i * rows, (i + 1) * rows, dtype=np.int64)
        pq.write_table(
            pa.table({"id": ids, "text": texts[part]}), os.path.join(folder, f"part-{i:03d}.parquet")
        )
    return texts


def write_images(
    folder: str | Path, count: int, size: tuple[int, int] = (224, 224), seed: int = 0, per_folder: int = 1000
) -> list[str]:
    """``count`` JPEG files of smooth random colour fields, ``per_folder`` to a subfolder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(count):
        sub = os.path.join(folder, f"d{i // per_folder:03d}")
        os.makedirs(sub, exist_ok=True)
        a, b, c = rng.uniform(0, 6.28, 3)
        img = np.stack(
            [
                127 + 120 * np.sin(xx / (20 + 10 * a) + b),
                127 + 120 * np.cos(yy / (15 + 5 * b) + c),
                127 + 120 * np.sin((xx + yy) / (25 + 7 * c) + a),
            ],
            axis=-1,
        )
        path = os.path.join(sub, f"img-{i:06d}.jpg")
        Image.fromarray(img.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def run_demo(directory: str, echo: Callable[[str], None] = print, runner: str = "local") -> int:
    """Build everything under ``directory``, score tables, images and texts on ``runner``, print
    where it went."""
    from scoring import cluster
    from scoring.config_file import load_config
    from scoring.job import run_job
    from scoring.page import write_html
    from scoring.progress import console_progress
    from scoring.report import load_report, summary

    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    echo(f"making a demo model and datasets under {root}")
    make_mlp(root / "mlp.onnx", (16, 32, 3))
    make_cnn(root / "cnn.onnx", size=64, classes=5)
    write_tables(root / "tables", files=4, rows=5000, features=16)
    write_images(root / "images", count=120, size=(80, 100), per_folder=60)
    texts = write_texts(root / "texts", files=2, rows=500)
    make_tokenizer(root / "tokenizer.json", texts)
    make_text_model(root / "encoder.onnx", vocab=120)
    jobs = {
        "tables": {
            "model": {"uri": str(root / "mlp.onnx")},
            "input": {
                "uri": str(root / "tables"),
                "format": "parquet",
                "columns": {"x": "features"},
                "keep": ["id"],
            },
            "output": {"uri": str(root / "out-tables"), "mode": "overwrite"},
        },
        "images": {
            "model": {"uri": str(root / "cnn.onnx")},
            "input": {
                "uri": str(root / "images"),
                "format": "images",
                "files_per_shard": 40,
                "image": {
                    "resize": "center_crop",
                    "mean": [0.485, 0.456, 0.406],
                    "std": [0.229, 0.224, 0.225],
                },
            },
            "output": {"uri": str(root / "out-images"), "mode": "overwrite"},
        },
        "texts": {
            "model": {"uri": str(root / "encoder.onnx")},
            "input": {
                "uri": str(root / "texts"),
                "format": "parquet",
                "keep": ["id"],
                "text": {"column": "text", "tokenizer": str(root / "tokenizer.json"), "max_length": 64},
            },
            "output": {"uri": str(root / "out-texts"), "mode": "overwrite", "embedding": {"pooling": "mean"}},
        },
    }
    for data in jobs.values():
        data["compute"] = {"runner": runner}
    started = cluster.connect(None) if runner == "ray" else False
    status = 0
    try:
        for name, data in jobs.items():
            echo(f"\n== {name} ==")
            result = run_job(load_config(data=data, environ={}), echo=echo, progress=console_progress(echo))
            echo(summary(result.record, result.records))
            page = root / f"report-{name}.html"
            write_html(str(page), load_report(result.out))
            echo(f"outputs: {result.out}/predictions/, _shards.parquet, _errors.parquet, _job.json")
            echo(
                f"report: {page} (open it in a browser; `scoring report {result.out} --html FILE` makes one)"
            )
            status = status or (0 if result.ok else 1)
    finally:
        if started:
            cluster.shutdown()
    return status

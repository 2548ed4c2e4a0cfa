"""Small real ONNX models for the tests, built with onnx.helper and skl2onnx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def linear(path: Path, shape: list, out: int = 3, dtype: int = TensorProto.FLOAT, seed: int = 1) -> str:
    """x [shape] -> y [batch, out] = flatten(x) @ W (W sized for the flattened row)."""
    k = int(np.prod([d for d in shape[1:]]))
    w = np.random.default_rng(seed).standard_normal((k, out)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["xf"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", dtype, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], out])],
        [numpy_helper.from_array(w, "w")],
    )
    return save(graph, path)


def two_inputs(path: Path) -> str:
    """a [batch, 2] float, b [batch] int64 -> s [batch] = sum(a) + b, d [batch, 2] = a * 2."""
    nodes = [
        helper.make_node("ReduceSum", ["a", "axes"], ["sa"], keepdims=0),
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["sa", "bf"], ["s"]),
        helper.make_node("Mul", ["a", "two"], ["d"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("d", TensorProto.FLOAT, ["batch", 2]),
        ],
        [
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    return save(graph, path)


def sequence_mean(path: Path) -> str:
    """tokens [batch, seq] float -> m [batch] = mean over seq (seq is dynamic)."""
    nodes = [helper.make_node("ReduceMean", ["tokens", "axes"], ["m"], keepdims=0)]
    graph = helper.make_graph(
        nodes,
        "seq",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    return save(graph, path, opset=18)  # ReduceMean takes axes as an input from opset 18


def transposed_output(path: Path, declare_batch: bool) -> str:
    """x [batch, 3] -> t [3, batch] (the batch on axis 1), declared as such or not."""
    out_shape = [3, "batch"] if declare_batch else [3, "n"]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0])]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, out_shape)],
    )
    return save(graph, path)


def sklearn_mixed(path: Path) -> tuple[str, object]:
    """A scikit-learn pipeline with a string input and a numeric input; outputs label and a ZipMap."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    colour = rng.choice(["red", "green", "blue"], 200)
    num = rng.standard_normal((200, 2)).astype(np.float32)
    y = ((colour == "red") ^ (num[:, 0] > 0)).astype(np.int64)
    import pandas as pd

    frame = pd.DataFrame({"colour": colour, "n0": num[:, 0], "n1": num[:, 1]})
    pipe = Pipeline(
        [
            (
                "pre",
                ColumnTransformer(
                    [
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
                        ("num", StandardScaler(), ["n0", "n1"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression()),
        ]
    ).fit(frame, y)
    onx = convert_sklearn(
        pipe,
        initial_types=[
            ("colour", StringTensorType([None, 1])),
            ("n0", FloatTensorType([None, 1])),
            ("n1", FloatTensorType([None, 1])),
        ],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    Path(path).write_bytes(onx.SerializeToString())
    return str(path), pipe


def fails_at_runtime(path: Path) -> str:
    """x [batch, 3] -> y, a Reshape to [1, 7]: no batch of 3-value rows fits it, so
    ONNX Runtime fails on every batch and every row (the signature itself is valid)."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 7])],
        [numpy_helper.from_array(np.array([1, 7], np.int64), "shape")],
    )
    return save(graph, path)


def classifier(path: Path, classes: int = 4, metadata: dict[str, str] | None = None, seed: int = 4) -> str:
    """x [batch, 8] -> logits [batch, C] = x @ W and probs [batch, C] = softmax(logits), with
    ``metadata`` in the model (an orientation classifier keeps ``character = 0,90,180,270``)."""
    w = np.random.default_rng(seed).standard_normal((8, classes)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes]),
        ],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def ctc(path: Path, classes: int, layout: str = "NTC", logits: bool = False) -> str:
    """ids [batch, steps] float -> scores [batch, steps, classes]: at each step the class nearest
    the id wins, softmax(-4 (id - c)^2) (logits when ``logits``); ``TNC`` gives [steps, batch,
    classes], declared with names that do not say where the batch is."""
    nodes = [
        helper.make_node("Unsqueeze", ["ids", "last"], ["col"]),
        helper.make_node("Sub", ["col", "classes"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("Mul", ["d2", "minus4"], ["z"]),
    ]
    out = "z"
    if not logits:
        nodes.append(helper.make_node("Softmax", ["z"], ["p"], axis=-1))
        out = "p"
    if layout == "TNC":
        nodes.append(helper.make_node("Transpose", [out], ["scores"], perm=[1, 0, 2]))
        dims = ["t", "n", classes]
    else:
        nodes.append(helper.make_node("Identity", [out], ["scores"]))
        dims = ["batch", "steps", classes]
    graph = helper.make_graph(
        nodes,
        "ctc",
        [helper.make_tensor_value_info("ids", TensorProto.FLOAT, ["batch", "steps"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, dims)],
        [
            numpy_helper.from_array(np.array([2], np.int64), "last"),
            numpy_helper.from_array(np.arange(classes, dtype=np.float32), "classes"),
            numpy_helper.from_array(np.array(-4.0, np.float32), "minus4"),
        ],
    )
    return save(graph, path)


def segmenter(path: Path, size: tuple = ("h", "w"), classes: bool = False, ids: bool = False) -> str:
    """x [batch, 3, H, W] RGB in 0..1 -> one channel: logits 20 (R - 0.5) [batch, 1, H, W] (red is
    foreground); ``classes``: scores [batch, 4, H/2, W/2] of (0.3, R, G, B) averaged over 2x2
    (argmax: 0 dark, 1 red, 2 green, 3 blue), a stride-2 head; ``ids``: their argmax, int64
    [batch, H/2, W/2]."""
    h, w = size
    if classes or ids:
        nodes = [
            helper.make_node("Slice", ["x", "start", "end", "axis"], ["r"]),
            helper.make_node("Mul", ["r", "zero"], ["z0"]),
            helper.make_node("Add", ["z0", "dark"], ["bg"]),
            helper.make_node("Concat", ["bg", "x"], ["cat"], axis=1),
            helper.make_node("AveragePool", ["cat"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        ]
        dims = ["batch", 4, h // 2 if isinstance(h, int) else "h2", w // 2 if isinstance(w, int) else "w2"]
        if ids:
            nodes.append(helper.make_node("ArgMax", ["pooled"], ["mask"], axis=1, keepdims=0))
            dims = [dims[0], *dims[2:]]
        else:
            nodes.append(helper.make_node("Identity", ["pooled"], ["mask"]))
    else:
        nodes = [
            helper.make_node("Slice", ["x", "start", "end", "axis"], ["r"]),
            helper.make_node("Sub", ["r", "half"], ["d"]),
            helper.make_node("Mul", ["d", "twenty"], ["mask"]),
        ]
        dims = ["batch", 1, h, w]
    graph = helper.make_graph(
        nodes,
        "segmenter",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, h, w])],
        [helper.make_tensor_value_info("mask", TensorProto.INT64 if ids else TensorProto.FLOAT, dims)],
        [
            numpy_helper.from_array(np.array([0], np.int64), "start"),
            numpy_helper.from_array(np.array([1], np.int64), "end"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(0.3, np.float32), "dark"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(20.0, np.float32), "twenty"),
        ],
    )
    return save(graph, path)


def _detector_raw(size: tuple[Any, Any], strides: tuple[int, ...]) -> tuple[list[Any], list[Any]]:
    """Nodes of a toy YOLOX-style detector (images [N, 3, H, W] in 0-1 -> raw [N, K, 7], two
    classes), and its initializers. Each grid cell's mean colour decides its candidate: objectness
    sigmoid(12 (brightness - 0.5)), class scores its red and green means, centre offset and size
    from its blue and red means (raw, before grid decoding: x, y, log w, log h)."""
    nodes, inits = (
        [],
        [
            numpy_helper.from_array(np.array([0, 3, -1], np.int64), "flat3"),
            numpy_helper.from_array(np.array(12.0, np.float32), "twelve"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(0.69, np.float32), "log2"),
        ],
    )
    cells = []
    for s in strides:
        nodes += [
            helper.make_node("AveragePool", ["images"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("Reshape", [f"p{s}", "flat3"], [f"r{s}"]),
            helper.make_node("Transpose", [f"r{s}"], [f"c{s}"], perm=[0, 2, 1]),
        ]
        cells.append(f"c{s}")
    for name, lo, hi in (("red", 0, 1), ("green", 1, 2), ("blue", 2, 3), ("rg", 0, 2)):
        inits += [
            numpy_helper.from_array(np.array([lo], np.int64), f"{name}_lo"),
            numpy_helper.from_array(np.array([hi], np.int64), f"{name}_hi"),
        ]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "ax2"))
    nodes += [
        helper.make_node("Concat", cells, ["feat"], axis=1),  # [N, K, 3] mean colour per cell
        *[
            helper.make_node("Slice", ["feat", f"{c}_lo", f"{c}_hi", "ax2"], [c])
            for c in ("red", "green", "blue", "rg")
        ],
        helper.make_node("ReduceMean", ["feat"], ["grey"], axes=[2], keepdims=1),
        helper.make_node("Sub", ["grey", "half"], ["g0"]),
        helper.make_node("Mul", ["g0", "twelve"], ["g1"]),
        helper.make_node("Sigmoid", ["g1"], ["obj"]),
        helper.make_node("Sub", ["blue", "half"], ["off"]),
        helper.make_node("Sub", ["red", "half"], ["r0"]),
        helper.make_node("Add", ["r0", "log2"], ["logwh"]),
        helper.make_node("Concat", ["off", "off", "logwh", "logwh", "obj", "rg"], ["raw"], axis=2),
    ]
    return nodes, inits


def detector(
    path: Path,
    layout: str,
    size: tuple[Any, Any] = (64, 64),
    strides: tuple[int, ...] = (8, 16, 32),
    normalized: bool = False,
) -> str:
    """The toy detector with its outputs rearranged into ``layout`` (yolox: as is; yolov5,
    yolov8, xyxy, boxes: grid-decoded in the graph, for a fixed ``size``), so that every layout
    gives the same detections."""
    nodes, inits = _detector_raw(size, strides)
    f = TensorProto.FLOAT
    image = helper.make_tensor_value_info("images", f, ["batch", 3, *size])
    if layout == "yolox":
        fixed = all(isinstance(d, int) for d in size)
        k = sum((size[0] // s) * (size[1] // s) for s in strides) if fixed else "k"
        out = [helper.make_tensor_value_info("raw", f, ["batch", k, 7])]
        return save(helper.make_graph(nodes, "detector", [image], out, inits), path)
    h, w = size
    grid = np.concatenate(
        [np.stack(np.mgrid[0 : h // s, 0 : w // s][::-1], -1).reshape(-1, 2) for s in strides]
    ).astype(np.float32)
    stride = np.concatenate([np.full((h // s) * (w // s), s) for s in strides]).astype(np.float32)[:, None]
    for name, lo, hi in (("xy", 0, 2), ("wh", 2, 4), ("o", 4, 5), ("cls", 5, 7)):
        inits += [
            numpy_helper.from_array(np.array([lo], np.int64), f"{name}_lo"),
            numpy_helper.from_array(np.array([hi], np.int64), f"{name}_hi"),
        ]
    scale = np.array([w, h, w, h] if normalized else [1, 1, 1, 1], np.float32)
    inits += [
        numpy_helper.from_array(grid, "grid"),
        numpy_helper.from_array(stride, "stride"),
        numpy_helper.from_array(scale, "norm"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes += [
        *[
            helper.make_node("Slice", ["raw", f"{c}_lo", f"{c}_hi", "ax2"], [f"raw_{c}"])
            for c in ("xy", "wh", "o", "cls")
        ],
        helper.make_node("Add", ["raw_xy", "grid"], ["xy0"]),
        helper.make_node("Mul", ["xy0", "stride"], ["xy"]),
        helper.make_node("Exp", ["raw_wh"], ["wh0"]),
        helper.make_node("Mul", ["wh0", "stride"], ["wh"]),
        helper.make_node("Mul", ["raw_o", "raw_cls"], ["scores"]),  # [N, K, 2]
        helper.make_node("Div", ["wh", "two"], ["hwh"]),
        helper.make_node("Sub", ["xy", "hwh"], ["p1"]),
        helper.make_node("Add", ["xy", "hwh"], ["p2"]),
        helper.make_node("Concat", ["p1", "p2"], ["xyxy0"], axis=2),
        helper.make_node("Div", ["xyxy0", "norm"], ["xyxy"]),
    ]
    outs = {"yolov5": ["out"], "yolov8": ["out"], "xyxy": ["out"], "boxes": ["xyxy", "scores"]}[layout]
    if layout == "yolov5":
        nodes.append(helper.make_node("Concat", ["xy", "wh", "raw_o", "raw_cls"], ["out"], axis=2))
    elif layout == "yolov8":
        nodes += [
            helper.make_node("Concat", ["xy", "wh", "scores"], ["v8"], axis=2),
            helper.make_node("Transpose", ["v8"], ["out"], perm=[0, 2, 1]),
        ]
    elif layout == "xyxy":
        nodes += [
            helper.make_node("ReduceMax", ["scores"], ["best"], axes=[2], keepdims=1),
            helper.make_node("ArgMax", ["scores"], ["cid"], axis=2, keepdims=1),
            helper.make_node("Cast", ["cid"], ["cidf"], to=f),
            helper.make_node("Concat", ["xyxy", "best", "cidf"], ["out"], axis=2),
        ]
    k = len(grid)
    shapes = {"yolov5": [[k, 7]], "yolov8": [[6, k]], "xyxy": [[k, 6]], "boxes": [[k, 4], [k, 2]]}[layout]
    outputs = [helper.make_tensor_value_info(o, f, ["batch", *d]) for o, d in zip(outs, shapes)]
    return save(helper.make_graph(nodes, "detector", [image], outputs, inits), path)


def bright_box(path: Path, size: tuple[Any, Any] = (64, 64)) -> str:
    """images [N, 3, H, W] (0-1) -> boxes [N, 1, 6]: the bounding box of the pixels brighter
    than 0.5, in model-input pixels (x1, y1, x2, y2, score 1 if any, class 0): a detector whose
    answer is known exactly."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["grey"], axes=[1], keepdims=0),  # [N, H, W]
        helper.make_node("Greater", ["grey", "half"], ["on"]),
        helper.make_node("Cast", ["on"], ["mask"], to=f),
        helper.make_node("ReduceMax", ["mask"], ["cols"], axes=[1], keepdims=0),  # [N, W]
        helper.make_node("ReduceMax", ["mask"], ["rows"], axes=[2], keepdims=0),  # [N, H]
        helper.make_node("ArgMax", ["cols"], ["x1i"], axis=1, keepdims=1),
        helper.make_node("ArgMax", ["cols"], ["x2i"], axis=1, keepdims=1, select_last_index=1),
        helper.make_node("ArgMax", ["rows"], ["y1i"], axis=1, keepdims=1),
        helper.make_node("ArgMax", ["rows"], ["y2i"], axis=1, keepdims=1, select_last_index=1),
        *[helper.make_node("Cast", [f"{v}i"], [f"{v}f"], to=f) for v in ("x1", "x2", "y1", "y2")],
        helper.make_node("Add", ["x2f", "one"], ["x2"]),
        helper.make_node("Add", ["y2f", "one"], ["y2"]),
        helper.make_node("ReduceMax", ["cols"], ["score"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["score", "zero"], ["cls"]),
        helper.make_node("Concat", ["x1f", "y1f", "x2", "y2", "score", "cls"], ["flat"], axis=1),
        helper.make_node("Unsqueeze", ["flat", "ax1"], ["boxes"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    ]
    image = helper.make_tensor_value_info("images", f, ["batch", 3, *size])
    out = helper.make_tensor_value_info("boxes", f, ["batch", 1, 6])
    return save(helper.make_graph(nodes, "bright_box", [image], [out], inits), path)

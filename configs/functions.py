"""The user's own code around the demo's image classifier (docs/models/functions.md)."""

import io

import numpy as np
from PIL import Image


def prepare(batch):
    """Encoded images -> the model's input "image" [N, 3, 64, 64], and per-row context."""
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in batch["image"].to_pylist()]
    pixels = np.stack([np.asarray(im.resize((64, 64)), np.float32) / 255 for im in images])
    return {
        "image": pixels.transpose(0, 3, 1, 2),  # NHWC -> NCHW, as the model takes it
        "brightness": pixels.mean(axis=(1, 2, 3)),  # not a model input: context for decode
        "width": np.array([im.width for im in images]),
    }


def decode(outputs, context):
    """Class scores -> the best class and how unsure the model is (the entropy of its scores)."""
    probs = outputs["probs"]
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    return {
        "label": probs.argmax(axis=1),
        "entropy": entropy,
        "brightness": context["brightness"],
        "width": context["width"],
    }

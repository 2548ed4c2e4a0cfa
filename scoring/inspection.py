"""``scoring inspect``: what a model takes and gives, and what this machine can run it on."""

from __future__ import annotations

from typing import Any

from scoring.model import load_model_info


def inspect_model(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's signature and facts, plus the ORT providers available here, as plain data."""
    import onnxruntime

    info, _ = load_model_info(uri, storage_options or {})
    data = info.to_json()
    data["available_providers"] = onnxruntime.get_available_providers()
    return data


def format_inspection(data: dict[str, Any]) -> str:
    def dims(shape: list[Any] | None) -> str:
        return "?" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"

    lines = [
        f"model     {data['uri']}",
        f"size      {data['size']:,} bytes",
        f"sha256    {data['sha256']}",
        f"producer  {data['producer'] or '-'}",
        "opset     " + ", ".join(f"{k} {v}" for k, v in data["opset"].items()),
        "inputs",
    ]
    for t in data["inputs"]:
        lines.append(
            f"  {t['name']:<20} {t['kind'] if t['kind'] != 'tensor' else t['dtype']:<10} {dims(t['shape'])}"
        )
    lines.append("outputs")
    for t in data["outputs"]:
        kind = t["kind"] if t["kind"] != "tensor" else t["dtype"]
        lines.append(
            f"  {t['name']:<20} {kind:<10} {dims(t['shape'])}"
            + (f"  {t['dtype']}" if t["kind"] != "tensor" else "")
        )
    if data["metadata"]:
        lines.append("metadata")
        lines += [f"  {k}: {v}" for k, v in data["metadata"].items()]
    lines.append("providers available here: " + ", ".join(data["available_providers"]))
    return "\n".join(lines)

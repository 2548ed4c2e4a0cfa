"""Text: a string column tokenized with a Hugging Face ``tokenizers`` file, for transformers.

The worker feeds the inputs the model declares among ``input_ids``, ``attention_mask`` and
``token_type_ids``, in their declared element type. Rows of a chunk are sorted by token count
before they are cut into batches, so a batch pads to rows of similar length (real text varies
10-100x in length: padding every batch to its longest row would spend most of the compute on
padding); ``inference`` puts the rows back in order after. A null text is a rejected row
(``NullValue``); an empty one is scored.

Tokenizing runs in Rust (``encode_batch`` releases the GIL and uses the worker's cores) and is
timed as preprocessing. The tokenizer file is fetched once per node, like a model.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import threading
from typing import Any

import numpy as np
import pyarrow as pa

from scoring import storage
from scoring.config import Config, InputConfig, TextConfig
from scoring.errors import ConfigError, InputError, StorageError
from scoring.model import ModelInfo, local_copy
from scoring.preprocess import Prepared, reject_nulls, unskipped
from scoring.record import Reason, Rejections
from scoring.tensors import Group

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_MAX_LENGTH = 512
# Rows tokenized and sorted at once: the window of length bucketing (a few MB of token ids).
CHUNK_ROWS = 8192
# A batch of text holds compute.batch_size rows of up to this many tokens each, on average: fewer
# rows when they are longer (attention's cost and memory grow with the padded length).
TOKENS_PER_ROW = 32
NULL = Reason("preprocess", "NullValue", "the text is null; the row is skipped")
INTEGERS = ("int64", "int32", "int16", "uint32", "uint64")
_loaded: dict[tuple[str, int], Any] = {}  # (sha256, max_length) -> Tokenizer, one per process
_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Text:
    column: str
    tokenizer: str  # its URI
    sha256: str
    storage_options: dict[str, Any]
    max_length: int
    feeds: tuple[tuple[str, str], ...]  # (model input, element type) among TEXT_INPUTS
    pad_id: int
    batch_size: int
    chunk_rows: int = CHUNK_ROWS

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def prepare(
        self, data: pa.Table, skip: np.ndarray | None, pool: concurrent.futures.Executor | None
    ) -> Prepared:
        texts = data.column(self.column).to_pylist()
        rejected = Rejections()
        rows = reject_nulls(texts, unskipped(len(texts), skip), rejected, NULL)
        encodings = self.encode([texts[i] for i in rows.tolist()])
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")  # similar lengths share a batch
        groups = [
            self._batch(rows[part], [encodings[i] for i in part.tolist()])
            for part in batches(lengths, order, self.batch_size)
        ]
        return Prepared(groups, rejected)

    def encode(self, texts: list[str]) -> list[Any]:
        return list(tokenizer(self).encode_batch(texts)) if texts else []

    def _batch(self, rows: np.ndarray, encodings: list[Any]) -> Group:
        """One batch, padded to its longest row (at least one token)."""
        width = max(max((len(e.ids) for e in encodings), default=1), 1)
        ids = np.full((len(encodings), width), self.pad_id, np.int64)
        mask = np.zeros((len(encodings), width), np.int64)
        types = np.zeros((len(encodings), width), np.int64)
        for j, e in enumerate(encodings):
            n = len(e.ids)
            ids[j, :n], mask[j, :n], types[j, :n] = e.ids, e.attention_mask, e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feed = {name: arrays[name].astype(dtype, copy=False) for name, dtype in self.feeds}
        return Group(rows, feed, {"attention_mask": mask})

    def notes(self, data: pa.Table) -> list[str]:
        """The first rows' token counts, and which were truncated."""
        texts = [t for t in data.column(self.column).to_pylist() if t is not None]
        counts = []
        for e in self.encode(texts):
            cut = f" (truncated to {self.max_length})" if e.overflowing else ""
            counts.append(f"{len(e.ids)}{cut}")
        return [f"tokens per row (max_length {self.max_length}): {', '.join(counts) or '-'}"]


def batches(lengths: np.ndarray, order: np.ndarray, rows: int) -> list[np.ndarray]:
    """``order`` (indices sorted by length) cut into batches of at most ``rows`` rows and of
    ``rows * TOKENS_PER_ROW`` tokens once padded: short rows go many to a batch, long rows few,
    so no batch holds much more than its share of padding or of memory."""
    budget = rows * TOKENS_PER_ROW
    out, start = [], 0
    while start < len(order):
        stop = start + 1
        while (
            stop < len(order) and stop - start < rows and (stop - start + 1) * lengths[order[stop]] <= budget
        ):
            stop += 1
        out.append(order[start:stop])
        start = stop
    return out


def tokenizer(text: Text) -> Any:
    """The ``Tokenizer`` of ``text``, loaded once per process: truncation at ``max_length``, no
    padding (batches are padded here, to their own longest row)."""
    key = (text.sha256, text.max_length)
    with _lock:
        tok = _loaded.get(key)
        if tok is None:
            from tokenizers import Tokenizer

            path = local_copy(text.tokenizer, text.sha256, text.storage_options, "tokenizers", ".json")
            tok = Tokenizer.from_file(path)
            tok.no_padding()
            tok.enable_truncation(text.max_length)
            _loaded[key] = tok
        return tok


def needs(inp: InputConfig, model: ModelInfo) -> list[str]:
    return [_text(inp).column]


def _text(inp: InputConfig) -> TextConfig:
    if inp.text is None:
        raise ConfigError("config key 'input.text' is not set; a text job needs it")
    return inp.text


def resolve(job: Config, model: ModelInfo, schema: pa.Schema, where: str) -> Text:
    """Check the text column, the tokenizer and the model's inputs. Raises ``InputError`` or
    ``ConfigError`` (exit 2) with the reason."""
    from tokenizers import Tokenizer

    cfg, so = _text(job.input), job.storage_options
    if cfg.column not in schema.names:
        raise InputError(
            f"{where}: no column '{cfg.column}' (columns found: {schema.names}); set input.text.column "
            "to the column of text"
        )
    t = schema.field(cfg.column).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise InputError(f"{where}: column '{cfg.column}' holds {t}; input.text.column must hold strings")
    feeds = _feeds(model)
    try:
        data = storage.read_bytes(cfg.tokenizer, so)
    except StorageError as exc:
        raise ConfigError(f"config key 'input.text.tokenizer': cannot read {cfg.tokenizer}: {exc}") from exc
    try:
        tok = Tokenizer.from_str(data.decode())
    except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ConfigError(
            f"config key 'input.text.tokenizer': {cfg.tokenizer} is not a Hugging Face tokenizers file "
            f"(tokenizer.json): {exc}"
        ) from exc
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if model.vocab_rows is not None and vocab > model.vocab_rows:
        raise ConfigError(
            f"config key 'input.text.tokenizer': {cfg.tokenizer} has {vocab} token ids but the model's "
            f"embedding table has {model.vocab_rows} rows: ids past {model.vocab_rows - 1} would fail in "
            "ONNX Runtime. Use the tokenizer the model was exported with"
        )
    own = (tok.truncation or {}).get("max_length")
    padding = tok.padding or {}
    pad_id = padding.get("pad_id", tok.token_to_id("[PAD]") or 0)
    max_length = cfg.max_length or own or DEFAULT_MAX_LENGTH
    sha = hashlib.sha256(data).hexdigest()
    return Text(cfg.column, cfg.tokenizer, sha, so, max_length, feeds, int(pad_id), job.compute.batch_size)


def _feeds(model: ModelInfo) -> tuple[tuple[str, str], ...]:
    names = [i.name for i in model.inputs]
    if "input_ids" not in names:
        raise InputError(
            f"input.text is set but the model has no input 'input_ids' (its inputs: {names}); a text "
            "model takes input_ids, and attention_mask and token_type_ids if it declares them"
        )
    other = [n for n in names if n not in TEXT_INPUTS]
    if other:
        raise InputError(
            f"model input(s) {other} cannot be fed from text: scoring feeds {', '.join(TEXT_INPUTS)}"
        )
    feeds = []
    for spec in model.inputs:
        if spec.dtype not in INTEGERS:
            raise InputError(f"model input '{spec.name}' is {spec.dtype}; token ids need an integer type")
        feeds.append((spec.name, spec.dtype))
    return tuple(feeds)

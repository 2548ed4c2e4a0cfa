"""Sound: decoded with libsndfile (``soundfile``), resampled with ``soxr``, cut into windows; in
pieces, so an hour-long file never sits whole in memory (docs/inputs/audio.md).

``decode(src, ...)`` opens a path or a seekable binary file and yields mono float32 samples at
the target rate, ``BLOCK_S`` seconds of input at a time: channels averaged (or the first kept)
before resampling, which costs half of resampling each channel (4.0 ms against 7.6 ms for 10 s of
44.1 kHz stereo); soxr's stream gives the same samples as one call over the whole clip, bit for
bit, once flushed with ``last=True``. ``Cutter`` turns those pieces into windows. Nothing here
knows shards or rows: the audio format (``formats.audio``) does.

What libsndfile does with bad files (measured, libsndfile 1.2.2): garbage or an empty file fails
at open; a truncated FLAC fails while reading; a truncated WAV or OGG reads fewer frames without
a word; an MP3 with a Xing header reads fewer frames than it declares. ``Truncated`` is raised
for the last case, and for any shortfall but an MP3's estimate (a header-less MP3's ``frames``
is a guess from its first frame's bitrate: off by a frame or two).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

BLOCK_S = 10  # seconds of input decoded at once: 3.5 MB of float32 at 44.1 kHz stereo
UNKNOWN_FRAMES = 2**62  # libsndfile's frame count of a stream it cannot measure


class Truncated(Exception):
    """A file that ends before its header says it does."""


class NoFrames(Exception):
    """A file that decodes to no samples."""


@dataclasses.dataclass(frozen=True)
class Header:
    """What a file's header says."""

    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    def samples_at(self, rate: int) -> int:
        """Samples once resampled to ``rate`` (soxr rounds half up)."""
        return math.floor(self.frames * rate / self.sample_rate + 0.5)


def header(src: Any) -> Header:
    """The header of a path or seekable file (raises soundfile's ``LibsndfileError``)."""
    import soundfile as sf

    with sf.SoundFile(src) as f:
        return Header(f.samplerate, f.channels, f.frames, f.format)


def decode(src: Any, rate: int, channels: str, opened: Any = None) -> Iterator[np.ndarray]:
    """Mono float32 samples of ``src`` at ``rate``, piece by piece (new arrays, never views of a
    reused buffer). ``channels``: ``mono`` averages them, ``first`` keeps the first. Raises
    soundfile's ``LibsndfileError``, ``Truncated`` or ``NoFrames``."""
    import soundfile as sf
    import soxr

    with opened if opened is not None else sf.SoundFile(src) as f:
        stream = None if f.samplerate == rate else soxr.ResampleStream(f.samplerate, rate, 1, dtype="float32")
        block = max(1, f.samplerate * BLOCK_S)
        buf = np.empty((block, f.channels), np.float32)
        declared, read = f.frames, 0
        while True:
            x = f.read(block, dtype="float32", always_2d=True, out=buf)
            read += len(x)
            last = len(x) < block
            mono = _mono(x, channels)
            if stream is not None:
                # (frames,) only: soxr takes (frames, channels) and crashes on the transpose.
                mono = stream.resample_chunk(mono, last=last)
            if len(mono):
                yield mono
            if last:
                break
        if read == 0:
            raise NoFrames("the file holds no audio frames")
        slack = declared // 100 if f.format == "MP3" else 0
        if declared < UNKNOWN_FRAMES and declared - read > slack:
            raise Truncated(
                f"the header declares {declared} frames ({declared / f.samplerate:.2f} s) but only "
                f"{read} ({read / f.samplerate:.2f} s) could be decoded: the file is truncated"
            )


def _mono(x: np.ndarray, channels: str) -> np.ndarray:
    if x.shape[1] == 1 or channels == "first":
        return x[:, 0].copy()
    if x.shape[1] == 2:  # 0.5 ms for 10 s of 44.1 kHz; x.mean(axis=1) takes 9 ms
        return (x[:, 0] + x[:, 1]) * np.float32(0.5)
    return x @ np.full(x.shape[1], 1.0 / x.shape[1], np.float32)


def count(samples: int, window: int, hop: int) -> int:
    """Windows of a clip of ``samples``: ``ceil((samples - window) / hop) + 1``, at least one."""
    return max(0, -(-(samples - window) // hop)) + 1


class Cutter:
    """Windows of ``window`` samples every ``hop``, from pieces of a clip fed in order; the last
    window padded with zeros (``count`` of them for the whole clip)."""

    def __init__(self, window: int, hop: int) -> None:
        self.window, self.hop = window, hop
        self.buf = np.zeros(0, np.float32)
        self.at = 0  # the clip's sample index of buf[0]
        self.seen = 0  # samples fed
        self.done = 0  # windows given

    def feed(self, piece: np.ndarray) -> np.ndarray:
        """The windows ``piece`` completes: float32 [k, window]."""
        self.seen += len(piece)
        self.buf = np.concatenate([self.buf, piece]) if len(self.buf) else piece
        return self._take(self.seen)

    def finish(self) -> np.ndarray:
        """The windows left once the clip has ended, the last padded with zeros."""
        last = count(self.seen, self.window, self.hop) - 1
        end = last * self.hop + self.window
        pad = end - self.at - len(self.buf)
        if pad > 0:
            self.buf = np.concatenate([self.buf, np.zeros(pad, np.float32)])
        return self._take(end)

    def _take(self, available: int) -> np.ndarray:
        w, h = self.window, self.hop
        k = max(0, (available - w - self.done * h) // h + 1) if available >= self.done * h + w else 0
        first = self.done * h - self.at
        if k:
            view = np.lib.stride_tricks.sliding_window_view(self.buf[first:], w)[: (k - 1) * h + 1 : h]
            out = np.ascontiguousarray(view)
        else:
            out = np.zeros((0, w), np.float32)
        self.done += k
        drop = min(self.done * h - self.at, len(self.buf))
        if drop > 0:
            self.buf, self.at = self.buf[drop:], self.at + drop
        return out

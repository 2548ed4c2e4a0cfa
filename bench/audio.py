"""``make bench`` (``--only audio``): a VAD over a thousand 10-second calls, and one hour-long call.

1,000 FLAC clips of 10 s at 44.1 kHz stereo (voiced bursts and silence), scored by silero VAD
(16 kHz mono, 576-sample windows every 512: 313 rows a clip) against the loop a user would
write (``bench/loop.py audio``: soundfile + soxr + ORT, one file at a time), and ``scoring run``
on both runners; whole commands, medians, predictions checked against the loop's. Then the peak
RSS (the whole process tree) of scoring one 60-minute clip, against the loop reading it whole.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from bench import HERE, ROOT, scoring_argv, timed

CLIPS, SECONDS, RATE = 1000, 10.0, 44100
VAD = HERE.parent / "tests" / "data" / "silero_vad" / "silero_vad_16k_op15.onnx"


def speech(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Stereo voiced bursts (a buzz with harmonics under a syllable envelope) and silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 60 * rng.random()
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 10))
    envelope = np.clip(np.sin(2 * np.pi * (0.3 + 0.5 * rng.random()) * t), 0, None) ** 0.5
    x = 0.25 * voice * envelope + 0.005 * rng.standard_normal(len(t))
    x = (0.8 * x / np.abs(x).max()).astype(np.float32)
    return np.stack([x, 0.7 * x], axis=1)


def clips() -> Path:
    import soundfile as sf

    folder = ROOT / f"calls-{CLIPS}"
    if not folder.exists():
        tmp = folder.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for i in range(CLIPS):
            sub = tmp / f"day={i % 4}"
            sub.mkdir(parents=True, exist_ok=True)
            sf.write(sub / f"call{i:04d}.flac", speech(SECONDS, RATE, i), RATE)
        tmp.rename(folder)
    return folder


def hour() -> Path:
    """One 60-minute call, written a minute at a time."""
    import soundfile as sf

    path = ROOT / "hour" / "call.flac"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        minute = speech(60.0, RATE, 0)
        with sf.SoundFile(path.with_suffix(".tmp"), "w", RATE, 2, format="FLAC") as f:
            for _ in range(60):
                f.write(minute)
        path.with_suffix(".tmp").rename(path)
    return path


def job(data: Path, out: Path) -> dict:
    return {
        "model": {"uri": str(VAD)},
        "input": {
            "uri": str(data),
            "format": "audio",
            "files_per_shard": 125,
            "audio": {"sample_rate": 16000, "window": 576, "hop": 512},
            "constants": {"sr": 16000, "state": "zeros"},
        },
        "output": {"uri": str(out), "outputs": {"speech": "output"}},
        "compute": {"batch_size": 1024},
    }


def audio_vs_loop(reps: int) -> None:
    data, out = clips(), ROOT / "out"
    files = [str(p) for p in sorted(data.rglob("*.flac"))]
    loop = [sys.executable, str(HERE / "loop.py"), "audio", str(VAD), str(out / "audio-loop"), *files]
    runs = {"loop": loop}
    for runner in ("local", "ray"):
        runs[f"scoring {runner}"] = scoring_argv(job(data, out / f"audio-{runner}"), runner)
    walls: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps):
        for name, argv in runs.items():
            shutil.rmtree(out / f"audio-{name.split()[-1]}", ignore_errors=True)
            t = timed(argv)
            walls[name].append(t.wall_s)
            peaks[name].append(t.peak_gb)
            print(f"  rep {rep + 1} {name:<14} {t.wall_s:7.2f}s  peak {t.peak_gb:.2f} GB", flush=True)
    rows = CLIPS * 313
    print(f"\n== audio: {CLIPS} clips of {SECONDS:.0f} s, 44.1 kHz stereo FLAC -> 16 kHz mono, silero VAD")
    print(f"({rows:,} windows; median of {reps}; whole commands)")
    base = statistics.median(walls["loop"])
    for name, times in walls.items():
        wall = statistics.median(times)
        print(
            f"{name:<15}{wall:8.2f}s {CLIPS / wall:8.1f} clips/s {rows / wall:10,.0f} windows/s "
            f"{base / wall:6.2f}x the loop, peak {statistics.median(peaks[name]):.2f} GB"
        )
    _check(out)
    _hour(out)


def _check(out: Path) -> None:
    """scoring's probabilities against the loop's, window by window."""
    keys = [("path", "ascending"), ("window", "ascending")]
    loop = pads.dataset(out / "audio-loop").to_table(columns=["path", "window", "speech"]).sort_by(keys)
    want = loop.column("speech").to_numpy()
    for runner in ("local", "ray"):
        got = pads.dataset(out / f"audio-{runner}" / "predictions").to_table().sort_by(keys)
        probs = np.array([s[0] for s in got.column("speech").to_pylist()])
        same = got.num_rows == loop.num_rows and got.column("path").equals(loop.column("path"))
        diff = float(np.abs(probs - want).max()) if same else float("nan")
        ok = "met " if same and diff < 1e-4 else "MISS"
        print(f"  {ok} {runner}: {got.num_rows:,} windows, max |diff| to the loop {diff:.2e}")


def _hour(out: Path) -> None:
    path = hour()
    size = path.stat().st_size / 1e6
    print(f"\n== one 60-minute call ({size:.0f} MB FLAC, 44.1 kHz stereo): peak RSS of the process tree")
    loop = timed(
        [sys.executable, str(HERE / "loop.py"), "audio", str(VAD), str(out / "hour-loop"), str(path)]
    )  # noqa: E501
    target = out / "hour-local"
    shutil.rmtree(target, ignore_errors=True)
    mine = timed(scoring_argv(job(path.parent, target), "local"))
    print(f"loop (whole file decoded)   {loop.wall_s:7.2f}s  peak {loop.peak_gb * 1000:6.0f} MB")
    print(f"scoring local (in pieces)   {mine.wall_s:7.2f}s  peak {mine.peak_gb * 1000:6.0f} MB")
    n = pads.dataset(target / "predictions").count_rows()
    print(f"  {'met ' if n == 112500 else 'MISS'} {n:,} windows (3600 s at 16 kHz: 112,500)")

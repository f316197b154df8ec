"""Reading audio as SPEC.md §4 says: soundfile, float32, channels averaged to mono, resampled to
16 kHz with ``torchaudio.functional.resample`` at its defaults."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000
MIN_SAMPLES = 400  # the conv extractor's receptive field: fewer samples give no frame


class AudioError(Exception):
    """An input that cannot be used; the message is the reason (the caller names the file)."""


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """(N,) float32 mono waveform at 16 kHz, or :class:`AudioError` saying why not."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"cannot decode: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None
    except OSError as err:
        raise AudioError(f"cannot read: {err.strerror or err}") from None
    if data.size == 0:
        raise AudioError("no samples")
    if not np.isfinite(data).all():
        raise AudioError("holds NaN or infinite samples")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), rate, SAMPLE_RATE).numpy()
    if wave.shape[0] < MIN_SAMPLES:
        raise AudioError(f"too short: {wave.shape[0]} samples at 16 kHz, at least {MIN_SAMPLES} (25 ms) are needed")
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_frames(path: str | os.PathLike) -> tuple[int, int] | None:
    """(frames, sample rate) from the header, or None when it cannot be read. Cheap: no decoding."""
    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - any unreadable header just means "unknown"
        return None
    return int(info.frames), int(info.samplerate)

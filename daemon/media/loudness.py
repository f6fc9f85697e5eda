"""Loudness (ITU-R BS.1770 / EBU R128) measurement and normalization with a true-peak guard.

pyloudnorm measures integrated loudness (K-weighted, gated). True peak is estimated by 4×
oversampling, the method of BS.1770-4 Annex 2, because inter-sample peaks clip after the lossy
AAC encode even when every stored sample is below full scale.
"""
from __future__ import annotations

import math

import numpy as np
import pyloudnorm
from scipy.signal import resample_poly

# BS.1770 gates in 400 ms blocks; a clip shorter than that is measured as one block.
GATING_BLOCK_S = 0.4
TRUE_PEAK_OVERSAMPLING = 4
SILENCE_LUFS = -math.inf


def integrated_loudness(samples: np.ndarray, rate: int) -> float:
    """Integrated loudness in LUFS; -inf for digital silence or an empty clip."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size < 2 or not np.any(samples):
        return SILENCE_LUFS
    # One sample short of the clip: pyloudnorm wants the clip strictly longer than a block.
    block = min(GATING_BLOCK_S, (samples.size - 1) / rate)
    loudness = pyloudnorm.Meter(rate, block_size=block).integrated_loudness(samples)
    return float(loudness)


def true_peak(samples: np.ndarray) -> float:
    """Linear true-peak estimate (1.0 = full scale)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0:
        return 0.0
    oversampled = resample_poly(samples, TRUE_PEAK_OVERSAMPLING, 1)
    return float(max(np.max(np.abs(oversampled)), np.max(np.abs(samples))))


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def normalize_loudness(samples: np.ndarray, rate: int, target_lufs: float,
                       peak_ceiling_dbtp: float = -1.0) -> tuple[np.ndarray, float]:
    """Scale to `target_lufs`, lowered where needed so the true peak stays under the ceiling.

    Returns (scaled float32 samples, gain applied in dB). Silence is returned unchanged (0 dB).
    The guard is a plain gain reduction, not a limiter: a very peaky clip ends up quieter than
    the target rather than distorted.
    """
    samples = np.asarray(samples, dtype=np.float32)
    loudness = integrated_loudness(samples, rate)
    if not math.isfinite(loudness):
        return samples.copy(), 0.0
    gain_db = target_lufs - loudness
    peak = true_peak(samples)
    if peak > 0:
        peak_db_after = 20.0 * math.log10(peak) + gain_db
        if peak_db_after > peak_ceiling_dbtp:
            gain_db -= peak_db_after - peak_ceiling_dbtp
    return (samples * np.float32(db_to_gain(gain_db))).astype(np.float32), gain_db

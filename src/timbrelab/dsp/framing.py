"""The one framing convention for every frame-based feature (f0, loudness, CQT, model frames).

Frames are **centred** (librosa's ``center=True`` with zero padding): frame ``i`` sits at sample
``i * hop``, i.e. at time ``i * hop / sample_rate``, and ``n`` samples have ``1 + n // hop`` frames
(the last frame is at sample ``(n // hop) * hop <= n``).

Two feature rates coexist: the model's frame rate (``features.frame_hop``) and the coarser CQT rate
(``features.cqt.hop_length``). The CQT hop must be an integer multiple of the frame hop, so CQT
frame ``j`` sits exactly on model frame ``j * ratio``.
"""

from __future__ import annotations

import numpy as np

from timbrelab.errors import ConfigError


def n_frames(n_samples: int, hop: int) -> int:
    """Centred framing: frames at samples 0, hop, 2*hop, ... up to and including n_samples // hop."""
    return 1 + int(n_samples) // int(hop)


def frame_times(num_frames: int, hop: int, sample_rate: int) -> np.ndarray:
    """(num_frames,) float64 times in seconds of the frame centres: ``i * hop / sample_rate``."""
    return np.arange(int(num_frames), dtype=np.float64) * (int(hop) / float(sample_rate))


def check_hop_ratio(cqt_hop: int, frame_hop: int, *, cqt_key: str = "features.cqt.hop_length",
                    frame_key: str = "features.frame_hop") -> int:
    """The integer ``cqt_hop // frame_hop``; ConfigError naming the keys unless it divides exactly.

    Both hops must be positive integers, and the CQT hop a multiple of the frame hop (ratio >= 1).
    """
    for key, value in ((frame_key, frame_hop), (cqt_key, cqt_hop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ConfigError(f"{key} ({value!r}) must be a positive integer number of samples")
    if cqt_hop % frame_hop != 0:
        raise ConfigError(f"{cqt_key} ({cqt_hop}) must be a multiple of {frame_key} ({frame_hop}); "
                          f"try {cqt_key}: {max(1, round(cqt_hop / frame_hop)) * frame_hop}")
    return int(cqt_hop // frame_hop)

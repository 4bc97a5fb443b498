"""From raw logits to the score a caller asked for, in float64.

Ranking always uses the raw logit: a squashed score cannot change the order. The released Ettin rerankers emit
logits from about -12 to 22, and a float32 sigmoid rounds every logit above ~16.6 to exactly 1.0, so the sigmoid is
taken here in float64 (distinct values up to a logit of ~36).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


def sigmoid(value: float) -> float:
    """Numerically stable logistic function in float64 (NaN stays NaN)."""
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)


@dataclass(frozen=True)
class Calibration:
    """A fitted map from logits to the probability of relevance: ``sigmoid(slope * logit + intercept)``."""

    slope: float
    intercept: float

    def __call__(self, logit: float) -> float:
        return sigmoid(self.slope * logit + self.intercept)


NOT_CALIBRATED = ("activation='calibrated' needs a calibrated model with a readable calibration.json: run "
                  "`ettin-rerank calibrate` on it (it writes calibration.json into the model folder; --overwrite "
                  "replaces a damaged one)")
CALIBRATION_FILE = "calibration.json"
"""Written into a model folder by ``ettin-rerank calibrate``; read by the engine for ``activation="calibrated"``."""


def load_calibration(folder: str | Path) -> Calibration | None:
    """The calibration stored in a model folder, or ``None`` when there is none or it cannot be used.

    A damaged file (truncated, not JSON, missing or non-finite numbers) never takes the model down: it is logged
    as a warning naming the file, plain and sigmoid scores work as before, and ``activation="calibrated"`` is
    refused with :data:`NOT_CALIBRATED`.
    """
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        calibration = Calibration(slope=float(data["slope"]), intercept=float(data["intercept"]))
        if not (math.isfinite(calibration.slope) and math.isfinite(calibration.intercept)):
            msg = "slope and intercept must be finite numbers"
            raise ValueError(msg)
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("%s cannot be used (%s: %s); scores without activation='calibrated' are not affected",
                       path, type(error).__name__, error)
        return None
    return calibration


def activate(logit: float, activation: str, calibration_factor: float = 1.0,
             calibration: Calibration | None = None) -> float:
    """The score for ``logit`` under ``activation`` (one of :data:`~ettin_rerank.options.ACTIVATIONS`)."""
    if activation == "none":
        return float(logit)
    if activation == "sigmoid":
        return sigmoid(calibration_factor * float(logit))
    if calibration is None:
        raise ValueError(NOT_CALIBRATED)
    return calibration(float(logit))

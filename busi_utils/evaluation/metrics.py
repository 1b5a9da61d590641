"""Segmentation and classification metrics, with the conventions written down, and their
intervals: the scores themselves are :mod:`~busi_utils.core.scores`, the bootstrap
:mod:`~busi_utils.evaluation.bootstrap`; this module gathers both, so chapters call
``metrics.<name>``.

Empty-mask convention (Dice/IoU per image): if truth and prediction are both empty the
score is 1 (nothing to find, nothing found); if only one is empty it is 0.
"""

from busi_utils.core.scores import (
    classification_metrics,
    dice_iou,
    expected_calibration_error,
    macro_f1_indices,
    referral_catch,
    referral_curve,
    reliability_curve,
)
from busi_utils.evaluation.bootstrap import (
    bootstrap_ci,
    classification_with_ci,
    mask_verdict,
    paired_bootstrap_diff,
    resample_indices,
    seed_differences,
)

__all__ = [
    "bootstrap_ci",
    "classification_metrics",
    "classification_with_ci",
    "dice_iou",
    "expected_calibration_error",
    "macro_f1_indices",
    "mask_verdict",
    "paired_bootstrap_diff",
    "referral_catch",
    "referral_curve",
    "reliability_curve",
    "resample_indices",
    "seed_differences",
]

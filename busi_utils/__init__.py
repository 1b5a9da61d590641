"""busi_utils: the small library behind the busi-course notebooks.

One module per idea (see README): ``config`` (profiles, run folder), ``data`` (finding,
indexing and loading BUSI), ``synthetic`` (an offline stand-in), ``dedup`` (duplicate
audit), ``splits`` (grouped hold-out and folds), ``segmentation``, ``oof``,
``classification``, ``metrics``, ``explain``, ``viz``, ``infer`` and ``widgets``.

Research and teaching only: nothing here is a diagnostic device.
"""

__version__ = "0.1.0"
DISCLAIMER = (
    "For research and teaching only. This is not a medical device and must not be used "
    "for diagnosis or treatment decisions."
)

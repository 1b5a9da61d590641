"""busi_utils: the small library behind the busi-course notebooks.

One module per idea, in the order of the course (the README's "Library" section says what each
holds): ``config``, ``runfolder``, ``files``, ``errors``, ``images`` (the core); ``data``,
``synthetic``, ``dedup``, ``splits``, ``preprocess`` (chapter 1); ``pretrained``, ``training``,
``augment``, ``segmentation`` (chapter 2); ``oof`` (chapter 3); ``classification``, ``shape``,
``crossfit``, ``fusion``, ``export`` (chapter 4); ``metrics``, ``uncertainty``, ``explain``,
``report``, ``viz`` (chapter 5); ``infer``, ``widgets``, ``webapp`` (chapter 6); ``external``,
``evaluate`` (chapter 7); ``benchmark`` and ``course`` (the scripts and ``make course``).

Research and teaching only: nothing here is a diagnostic device.
"""

__version__ = "0.1.0"
DISCLAIMER = (
    "For research and teaching only. This is not a medical device and must not be used "
    "for diagnosis or treatment decisions."
)

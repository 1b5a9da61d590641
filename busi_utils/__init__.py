"""busi_utils: the small library behind the busi-course notebooks, in one folder per stage of
the data's journey (the README's "Library" section lists every module):

* ``core``: configuration and profiles, errors, atomic files, the run folder, pixel
  conversions, shared plots, benchmarks;
* ``data`` (chapter 1): finding and checking BUSI, the index, duplicates, the grouped split,
  the resized-array cache, external sets;
* ``stage1`` (chapters 2 and 3): pretrained encoders, the training loop, augmentation, the
  U-Net, the leakage-safe masks;
* ``stage2`` (chapter 4): the classifiers' inputs and recipe, the lesion view and shape
  evidence, cross-fitted members, the fused decision;
* ``evaluation`` (chapters 5 and 7): metrics and intervals, calibration and uncertainty,
  Grad-CAM, the leakage experiments, the results file, external evaluation;
* ``serve`` (chapter 6): the export and its graphs, the Predictor and its command line, the
  widgets app and the web page;
* ``course`` and ``book``: ``make course`` and ``make book``.

The flat names of earlier releases (``busi_utils.segmentation``) still import, with a warning.
Research and teaching only: nothing here is a diagnostic device.
"""

import os
import warnings

from busi_utils import _aliases
from busi_utils.core import reproducible

reproducible.pin_environment()  # before torch loads (a learner's kernel imports busi_utils first): see its docstring
# fastai's import reaches torch.jit.script, which torch 2.14 deprecates: noise a learner cannot act on, with a
# machine path in it. Silenced here for this process, and through PYTHONWARNINGS for the kernels and commands it
# starts (the course's notebooks import fastai before busi_utils); nothing else is filtered.
JIT_NOTICE = "ignore:`torch.jit.script` is deprecated:FutureWarning"
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
if JIT_NOTICE not in os.environ.get("PYTHONWARNINGS", ""):
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), JIT_NOTICE]))

__version__ = "0.1.0"
DISCLAIMER = (
    "For research and teaching only. This is not a medical device and must not be used "
    "for diagnosis or treatment decisions."
)
_aliases.install()

"""A new site (chapter 8): what adapts the run's pipeline to another hospital's scanner.

* :mod:`~busi_utils.adapt.batchnorm`: batch-norm statistics re-estimated on the site's unlabelled scans (AdaBN);
* :mod:`~busi_utils.adapt.prior`: the site's class mix estimated without labels (EM, BBSE) and the
  probabilities corrected for it;
* :mod:`~busi_utils.adapt.fewshot`: a few labelled patients of the site;
* :mod:`~busi_utils.adapt.site`: the site folder and its manifest.

It sits below evaluation and serve, so that both can answer with a site.
"""

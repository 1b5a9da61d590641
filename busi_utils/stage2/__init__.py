"""Stage 2, what is it? (chapter 4): the classifiers' inputs and recipe, the lesion view and shape evidence, cross-fitted members, the fused decision."""

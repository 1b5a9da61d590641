"""How good is it, honestly? (chapters 5 and 7): metrics and intervals, calibration and uncertainty, Grad-CAM, the leakage experiments, the results file, external evaluation."""

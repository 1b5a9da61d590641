"""Stage 1, where is the lesion? (chapters 2 and 3): pretrained encoders, the training loop, augmentation, the U-Net, the leakage-safe masks."""

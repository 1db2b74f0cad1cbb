"""Training: datasets and augmentation, the decomposition trainer, the CycleGAN and its losses."""

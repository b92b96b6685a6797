"""Training runs: ``settings`` (every run's sizes, as data), ``scale`` (quick or full), ``data`` (the duplication
task, byte corpora), ``trainer`` (one loop, exact resume, several processes), ``duplication`` (the paper's Table 2,
lesson 06), ``longseq`` (lesson 07), ``plan`` (every run's peak memory and whether it fits), ``fullscale`` (the
GPU owner's command) and ``gpucheck`` (one prepared check that fits a short GPU loan)."""

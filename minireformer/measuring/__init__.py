"""Measuring, the same way everywhere: ``timing`` (devices, threads, timed steps), ``memory`` (what a pass saves,
the exact peak of a step), ``report`` (slopes, sizes, the one table formatter, runs on record), ``steps`` (the one
training step, the stacks measured), ``complexity`` (the paper's Table 3, formulas and measurements), ``bench``
(the benchmark commands) and ``anchors`` (HF transformers and reformer-pytorch, built to be measured against)."""

"""minireformer: the Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020) built one mechanism at a time.

The mechanisms, each readable top to bottom and importing only the ones above it (and ``checks``):

- ``hashing``: angular LSH by random rotation, ``h(x) = argmax([xR; -xR])`` (section 2.2).
- ``lsh``: multi-round LSH attention as small steps (sort, chunk, look back, mask, attend, unsort, combine),
  its fast path and its slow reference.
- ``attention``: shared-QK full attention and the attention layers.
- ``reversible``: reversible residual layers and their memory-free backward (section 3).
- ``chunking``: the chunked feed-forward (section 3).
- ``model``: ``ReformerLM``, every mechanism in one language model, and sampling.

The harness around them, which imports the mechanisms and never the other way round:

- ``measure``: the one toolbox for timing, devices, threads, slopes, byte formatting and tables.
- ``memory``: the bytes a pass saves for backward and the exact peak of a step.
- ``complexity``: the paper's Table 3 as code, measured on the package's modules (lessons 00 and 05).
- ``lab``: the small experiments of lessons 02-04 (the LSH walkthrough, recall, a reversible stack's memory,
  drift and step time against depth, the chunked feed-forward's peak).
- ``bench``: the benchmark commands (Figure 5, reversible stacks, replayed buckets); ``anchors``: HF
  transformers' and reformer-pytorch's layers, built to be measured against; ``hf``: HF transformers' whole
  Reformer (the published checkpoints) loaded into ``ReformerLM`` (lesson 08).
- ``data``, ``train``, ``experiments`` (Table 2, lesson 06), ``longseq`` (lesson 07), ``plan`` (the memory
  plan of every run), ``fullscale`` (the GPU owner's command), ``scale`` (quick or full).
- ``exercises`` / ``checking`` / ``solutions``: the lessons' "build it" exercises, the checker that names a
  learner's mistake, and the teaching solutions.
- ``plots`` (one function per figure: it only draws), ``widgets`` (controls around the data and its figure)
  and ``__main__`` (the commands; its figure table joins each experiment to its picture).
"""

__version__ = "0.1.0"

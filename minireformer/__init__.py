"""minireformer: the Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020) built one mechanism at a time.

The core, one module per mechanism, is the paper: it imports nothing else of the package. Read it in the lessons'
order:

- ``checks``: the one argument check every module shares.
- ``hashing``: angular LSH by random rotation, ``h(x) = argmax([xR; -xR])`` (section 2.2; lesson 01).
- ``lsh``: LSH attention as small steps (sort, chunk, look back, mask, attend, unsort, combine) and their
  composition ``lsh_attention``, the one to read; its slow dense twin; the implementations' conventions (lesson 02;
  appendix A).
- ``fast_lsh``: the same attention in blocks of chunks with a recomputing backward, what the layers run.
- ``attention``: shared-QK full attention and the attention layers.
- ``reversible``: reversible residual layers and their memory-free backward (section 3; lesson 03).
- ``chunking``: the chunked feed-forward (section 3; lesson 04).
- ``model``: ``ReformerLM``, every mechanism in one language model, and sampling.

The course's machinery, in subpackages by job; imports go one way, each importing the core and the ones above:

- ``measuring``: timing, memory, tables and runs on record, one training step, Table 3 (lessons 00, 05), the
  benchmarks and the implementations they compare with.
- ``training``: every run's settings as data, the data, the trainer, the duplication task (lesson 06), long
  sequences (lesson 07), the memory plan and the full-scale command.
- ``hf``: HF transformers' published Reformer built on the core, its weights and its logits (appendix C).
- ``course``: the lessons' experiments, figures, widgets, exercises, their checker and solutions.

``__main__`` holds the commands (``python -m minireformer``) and the one table that joins each experiment to its
figure. ``records/`` holds the committed runs and weights the lessons read.
"""

__version__ = "0.1.0"

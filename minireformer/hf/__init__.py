"""HF transformers' published Reformer, built on the course's core (appendix C).

- ``model``: what the published models do that the paper's does not (local attention layers, factorized buckets,
  padding to several chunk lengths, HF's shapes and seeded rotations), as options of ``PublishedConfig`` for
  ``PublishedReformerLM``, a :class:`~minireformer.model.ReformerLM`.
- ``convert``: an HF model's config and weights read into it (``from_huggingface``), random models shaped like the
  two published ones, the agreement table (``python -m minireformer hf``) and Google's trained weights where they
  can be had. Needs the ``compare`` extra.
"""

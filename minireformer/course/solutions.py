"""The exercises' teaching solutions: what a learner writes at each lesson's "build it" step.

Each exercise rebuilds a function of the core, and that readable function is its solution: ``show_solution``
prints the core's own source, so nothing is copied here. Lesson 02's capstone, ``lsh_attention``, is the core's
composition of the pieces a learner built before it (:func:`minireformer.lsh.lsh_attention`). The one solution
written here is lesson 03's ``rev_inverse``, which the core has as a method (``RevBlock.inverse``).
"""

from ..chunking import chunked_feed_forward
from ..hashing import hash_vectors
from ..lsh import attend, chunk_mask, combine_rounds, look_back_chunks, lsh_attention, sort_by_bucket

__all__ = [
    "hash_vectors",
    "sort_by_bucket",
    "look_back_chunks",
    "chunk_mask",
    "attend",
    "combine_rounds",
    "lsh_attention",
    "rev_inverse",
    "chunked_feed_forward",
]


def rev_inverse(f, g, y1, y2):
    """The inputs of a reversible block from its outputs: ``x2 = y2 - G(y1)``, then ``x1 = y1 - F(x2)``."""
    x2 = y2 - g(y1)  # y1 is known, so G(y1) can be run again
    x1 = y1 - f(x2)  # and now x2 is known
    return x1, x2

"""Angular locality-sensitive hashing by random rotation (Reformer, section 2.2).

    "To get b hashes, we first fix a random matrix R of size [d_k, b/2]. We then define
     h(x) = argmax([xR; -xR]) where [u; v] denotes the concatenation of two vectors."

Why it works: the 2 * (b/2) = b directions ``±R[:, i]`` cut the space into b cones through the origin, and a
vector's bucket is the cone it points into. Only the *direction* of x matters (multiplying x by a positive
number multiplies every score by it, so the argmax stays), so we may picture every vector as a point on the
unit sphere. Two vectors at a small angle usually land in the same cone; two at a large angle rarely do.
For b = 2 the probability that they share a bucket is exactly ``1 - theta / pi`` (a random hyperplane
separates them with probability ``theta / pi``); for more buckets it falls faster with the angle.

Shapes (the paper's names): ``x [..., L, d]``, ``rotations [n_rounds, d, n_buckets // 2]``,
buckets ``[..., n_rounds, L]`` with values in ``[0, n_buckets)``. The fast hash the layers use,
:func:`minireformer.fast_lsh.hash_block`, gives the same buckets without building ``[xR; -xR]``.
"""

import torch

from .checks import check_int


def check_n_buckets(n_buckets, name="n_buckets"):
    """Raise a ValueError unless ``n_buckets`` is an even integer >= 2 (``h`` needs ``±`` pairs)."""
    wanted = "an even integer >= 2"
    if check_int(name, n_buckets, least=2, wanted=wanted) % 2:
        raise ValueError(f"{name} must be {wanted}, got {n_buckets!r}")


def random_rotations(dim, n_buckets, n_rounds=1, *, generator=None, device=None, dtype=None):
    """Draw the random matrices R of the hash: Gaussian entries, shape ``[n_rounds, dim, n_buckets // 2]``.

    Each round gets its own R, so each round cuts the sphere differently. The draw happens on the
    generator's device (a CPU generator by default) and is then moved, so the same seed gives the same
    rotations on every device.
    """
    check_n_buckets(n_buckets)
    check_int("dim", dim), check_int("n_rounds", n_rounds)
    dtype = dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    draw_device = generator.device if generator is not None else device
    rotations = torch.randn(n_rounds, dim, n_buckets // 2, generator=generator, device=draw_device, dtype=dtype)
    return rotations.to(device) if device is not None else rotations


def hash_vectors(x, rotations):
    """Bucket ids ``h(x) = argmax([xR; -xR])`` for every vector and every round.

    x: ``[..., L, d]`` floating point; rotations: ``[n_rounds, d, n_buckets // 2]`` (leading dims of their own
    broadcast against x's: one rotation per head).
    Returns int64 ``[..., n_rounds, L]`` in ``[0, n_buckets)``. Bucket ``i < n_buckets/2`` is the cone
    around ``+R[:, i]``, bucket ``i + n_buckets/2`` the cone around ``-R[:, i]``. The zero vector, which
    has no direction, gets bucket 0, and so does a vector holding a NaN (argmax counts NaN as the largest).
    """
    _check_hash_inputs(x, rotations)
    rotated = torch.einsum("...ld,...rdb->...rlb", x, rotations.to(x.dtype))  # [..., n_rounds, L, n_buckets/2]
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # [..., n_rounds, L]


def _check_hash_inputs(x, rotations):
    """Raise a TypeError or ValueError naming what is wrong with ``x`` or ``rotations`` for the hash."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if not torch.is_tensor(rotations) or rotations.dim() < 3:
        got = tuple(rotations.shape) if torch.is_tensor(rotations) else type(rotations).__name__
        raise ValueError(f"rotations must have shape [n_rounds, dim, n_buckets // 2] (random_rotations), got {got}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape [..., L, dim], got {tuple(x.shape)}")
    if x.shape[-1] != rotations.shape[-2]:
        raise ValueError(
            f"x has last dimension {x.shape[-1]} but rotations expect dim {rotations.shape[-2]} "
            f"(rotations shape {tuple(rotations.shape)})"
        )
    if x.device != rotations.device:
        raise ValueError(f"x is on {x.device} but rotations are on {rotations.device}")

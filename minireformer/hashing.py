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
buckets ``[..., n_rounds, L]`` with values in ``[0, n_buckets)``.
"""

import math

import torch

from .checks import check_int

HASH_GROUP = 32  # columns per group in hash_block's two-stage argmax (reductions over 32 floats vectorize well)


def check_n_buckets(n_buckets):
    """Raise a ValueError unless ``n_buckets`` is an even integer >= 2 (``h`` needs ``±`` pairs)."""
    wanted = "an even integer >= 2"
    if check_int("n_buckets", n_buckets, least=2, wanted=wanted) % 2:
        raise ValueError(f"n_buckets must be {wanted}, got {n_buckets!r}")


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
    has no direction, gets bucket 0.
    """
    _check_hash_inputs(x, rotations)
    rotated = torch.einsum("...ld,...rdb->...rlb", x, rotations.to(x.dtype))  # [..., n_rounds, L, n_buckets/2]
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # [..., n_rounds, L]


def hash_block(x, rotations):
    """``hashing.hash_vectors`` (``argmax([xR; -xR])``) without building ``[xR; -xR]``: ``x [b, l, d]`` -> ``[b, r, l]``.

    Optimization: with n_buckets = 2L / chunk_len the rotated vectors are O(L^2) numbers, the one quadratic
    term of the layer, so after the matrix product (all rounds in one, ``[b * l, d] @ [d, r * n_buckets / 2]``)
    each of them should be read as few times as possible. Max *values* are fast vectorized reductions; a max
    with indices, or a pass that compares every number with the winner, is several times slower. So: take
    the largest and the smallest value of each group of ``HASH_GROUP`` columns of ``xR`` (one fast pass each),
    the row's largest and smallest from those, keep whichever is larger in size (the winner of
    ``[xR; -xR]``), find the first group holding it, and search only that group for its first column.
    Ties go to the ``+xR`` half and to the first index, as argmax's do, so the buckets are exactly
    :func:`hash_vectors`' (tests/test_hashing.py checks it, ties within and across groups included).
    """
    (b, l, d), (n_rounds, _, half) = x.shape, rotations.shape[-3:]
    if x.dtype != rotations.dtype or x.device != rotations.device:
        return hash_vectors(x, rotations)  # let hash_vectors explain the mismatch / cast
    with torch.no_grad():  # integers come out: nothing to record
        if rotations.dim() == 4:  # one rotation per row: [b, l, d] @ [b, d, r * half]
            rotated = (x @ rotations.transpose(1, 2).reshape(b, d, n_rounds * half)).reshape(b * l, -1)
        else:
            rotated = x.reshape(b * l, d) @ rotations.transpose(0, 1).reshape(d, n_rounds * half)
        n = b * l * n_rounds
        # groups pay off from a few of them on (measured: at half = 64 one group was as fast); else one group
        width = HASH_GROUP if half % HASH_GROUP == 0 and half >= 4 * HASH_GROUP else half
        n_groups = half // width
        groups = rotated.view(n, n_groups, width)
        group_top, group_bottom = groups.amax(dim=-1), groups.amin(dim=-1)  # [n, n_groups]
        top, bottom = group_top.amax(dim=-1), group_bottom.amin(dim=-1)  # [n]
        upper = top >= -bottom  # the winner of argmax([xR; -xR]) is in the +xR half
        winner = torch.where(upper, top, bottom).unsqueeze(-1)
        if n_groups == 1:
            group, within = 0, groups.view(n, width)
        else:
            group = _first_true(torch.where(upper.unsqueeze(-1), group_top, group_bottom) == winner)  # [n]
            rows = torch.arange(0, n * n_groups, n_groups, device=x.device) + group
            within = groups.view(n * n_groups, width).index_select(0, rows)  # [n, width]: the winner's group
        first = group * width + _first_true(within == winner)
        return torch.where(upper, first, first + half).view(b, l, n_rounds).transpose(1, 2)


def check_bucket_factors(factors):
    """Raise a ValueError unless ``factors`` is a tuple or list of even integers >= 2 (factorized buckets)."""
    if not isinstance(factors, (tuple, list)) or not factors:
        raise ValueError(f"bucket_factors must be a tuple of even integers >= 2, got {factors!r}")
    for n in factors:
        check_n_buckets(n)


def hash_factorized(x, rotations, factors, hash_fn=hash_vectors):
    """Factorized buckets (trax; HF's ``num_buckets=[n_1, n_2]``): ``n_1 n_2`` buckets from ``(n_1 + n_2) / 2``
    rotated coordinates instead of ``n_1 n_2 / 2``.

    The columns of R are split into groups of ``n_i / 2``; each group hashes on its own,
    ``h_i(x) = argmax([x R_i; -x R_i])`` in ``[0, n_i)``, and the ids are read as the digits of one number,
    the first group the lowest digit: ``h(x) = h_1 + n_1 (h_2 + n_2 (h_3 + ...))``.
    ``rotations [..., d, sum(factors) / 2]`` as for ``hash_fn`` (:func:`hash_vectors`, or :func:`hash_block`);
    returns ids in ``[0, prod(factors))``.
    """
    check_bucket_factors(factors)
    if sum(factors) != 2 * rotations.shape[-1]:
        raise ValueError(f"rotations must have sum(bucket_factors) / 2 = {sum(factors) // 2} columns for "
                         f"bucket_factors {tuple(factors)}, got {rotations.shape[-1]}")
    buckets, base, start = 0, 1, 0
    for n in factors:
        buckets = buckets + base * hash_fn(x, rotations[..., start : start + n // 2])
        base, start = base * n, start + n // 2
    return buckets


def _first_true(hits):
    """Index of the first True along the last dim (argmax takes no bools; the same bytes read as uint8)."""
    return hits.view(torch.uint8).argmax(dim=-1)


def _check_hash_inputs(x, rotations):
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if not torch.is_tensor(rotations) or rotations.dim() < 3:
        raise ValueError(
            "rotations must have shape [n_rounds, dim, n_buckets // 2] (from random_rotations), "
            f"got {tuple(rotations.shape) if torch.is_tensor(rotations) else type(rotations).__name__}"
        )
    if x.dim() < 2:
        raise ValueError(f"x must have shape [..., L, dim], got {tuple(x.shape)}")
    if x.shape[-1] != rotations.shape[-2]:
        raise ValueError(
            f"x has last dimension {x.shape[-1]} but rotations expect dim {rotations.shape[-2]} "
            f"(rotations shape {tuple(rotations.shape)})"
        )
    if x.device != rotations.device:
        raise ValueError(f"x is on {x.device} but rotations are on {rotations.device}")


def planar_rotations(angle, n_buckets, *, dtype=None):
    """A 2-D "rotation" for pictures: ``n_buckets // 2`` unit columns, evenly spaced, turned by ``angle``.

    In the plane the b directions ``±R[:, i]`` then sit every ``2 pi / b`` radians, starting at
    ``angle``, so the buckets are b equal arcs of the unit circle numbered counter-clockwise: bucket i
    is centred on the direction ``angle + 2 pi i / b``. Returns ``[1, 2, n_buckets // 2]``.
    """
    check_n_buckets(n_buckets)
    half = n_buckets // 2
    directions = angle + math.pi * torch.arange(half, dtype=torch.float64) / half
    columns = torch.stack([directions.cos(), directions.sin()])  # [2, n_buckets/2]
    return columns.unsqueeze(0).to(dtype or torch.get_default_dtype())


def unit_vectors_at_angles(theta, dim, *, generator=None, dtype=torch.float64):
    """A unit vector ``u`` and, for each angle in ``theta``, a unit vector at that angle from ``u``.

    Returns ``[1 + len(theta), dim]``: row 0 is u, row k + 1 is ``cos(theta_k) u + sin(theta_k) v`` with v
    a unit vector orthogonal to u (both random).
    """
    if dim < 2:
        raise ValueError(f"dim must be >= 2 to place two vectors at an angle, got {dim}")
    theta = torch.as_tensor(theta, dtype=dtype).reshape(-1)
    u, w = torch.randn(2, dim, generator=generator, dtype=dtype)
    u = u / u.norm()
    v = w - (w @ u) * u  # Gram-Schmidt: v is orthogonal to u
    v = v / v.norm()
    others = theta.cos()[:, None] * u + theta.sin()[:, None] * v
    return torch.cat([u[None], others])


def collision_probability(theta, n_buckets, *, dim=64, n_rounds=1, n_samples=10_000, generator=None):
    """Monte-Carlo estimate of P(two vectors at angle theta share a bucket in at least one of n_rounds).

    The distribution of a Gaussian R is the same in every orientation, so one fixed pair of vectors at
    angle theta and many independent draws of R measure the same probability as random pairs would.
    theta: a float or a 1-D tensor of angles in radians. Returns a float64 tensor of theta's shape.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    theta = torch.as_tensor(theta, dtype=torch.float64)
    points = unit_vectors_at_angles(theta, dim, generator=generator)  # [1 + T, dim]
    rotations = random_rotations(dim, n_buckets, n_samples * n_rounds, generator=generator, dtype=torch.float64)
    buckets = hash_vectors(points, rotations).reshape(n_samples, n_rounds, -1)  # [samples, rounds, 1 + T]
    met = (buckets[..., 1:] == buckets[..., :1]).any(dim=1)  # [samples, T]: met in some round
    return met.double().mean(dim=0).reshape(theta.shape)


def two_bucket_collision_probability(theta):
    """Exact P(same bucket) for ``n_buckets = 2``: a random hyperplane splits two vectors at angle theta
    with probability ``theta / pi``, so they collide with probability ``1 - theta / pi``."""
    return 1 - torch.as_tensor(theta, dtype=torch.float64) / math.pi


def collision_curves(thetas, bucket_counts=(2, 4, 8, 16), *, dim=64, n_rounds=1, n_samples=10_000, seed=0):
    """``{n_buckets: collision_probability(thetas, n_buckets, ...)}`` for several bucket counts, one seed."""
    generator = torch.Generator().manual_seed(seed)
    return {
        n_buckets: collision_probability(thetas, n_buckets, dim=dim, n_rounds=n_rounds, n_samples=n_samples, generator=generator)
        for n_buckets in bucket_counts
    }


def angle_grid(step_degrees=5):
    """Angles from 0 to pi in steps of ``step_degrees``, in radians (float64): the x axis of the collision figures."""
    return torch.deg2rad(torch.arange(0, 180 + step_degrees / 2, step_degrees, dtype=torch.float64))


# ---- points to hash: the data of the lessons' pictures -----------------------------------------------------------
def random_unit_vectors(n, dim, *, generator=None):
    """n points drawn uniformly on the unit sphere in ``dim`` dimensions (normalised Gaussians): ``[n, dim]``."""
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def hash_points(n_points, n_buckets, *, dim=2, seed=0, angle=None, rotation_seed=0):
    """Points on the unit circle (dim 2) or sphere (dim 3) and their buckets under one hash round.

    ``angle`` (radians, circle only) picks the evenly spaced rotation of :func:`planar_rotations`;
    ``angle=None`` draws a Gaussian R from ``rotation_seed``, as the Reformer does.
    Returns a dict with ``points [n, dim]``, ``rotations [1, dim, n_buckets // 2]`` and ``buckets [n]``.
    """
    points = random_unit_vectors(n_points, dim, generator=torch.Generator().manual_seed(seed))
    if angle is not None:
        if dim != 2:
            raise ValueError(f"angle only applies to the circle (dim=2), got dim={dim}")
        rotations = planar_rotations(angle, n_buckets, dtype=torch.float64)
    else:
        rotations = random_rotations(
            dim, n_buckets, generator=torch.Generator().manual_seed(rotation_seed), dtype=torch.float64
        )
    return {"points": points, "rotations": rotations, "buckets": hash_vectors(points, rotations)[0]}


def clustered_vectors(length, d, n_clusters, *, strength=4.0, generator=None):
    """``[length, d]`` float64 vectors around ``n_clusters`` random directions, as trained queries and keys
    are: each is ``strength * sqrt(d) * centre + noise``, so full attention stays mostly inside a cluster."""
    centers = torch.nn.functional.normalize(torch.randn(n_clusters, d, generator=generator, dtype=torch.float64), dim=-1)
    cluster = torch.randint(n_clusters, (length,), generator=generator)
    return strength * d ** 0.5 * centers[cluster] + torch.randn(length, d, generator=generator, dtype=torch.float64)

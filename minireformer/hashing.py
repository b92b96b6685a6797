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

    x: ``[..., L, d]`` floating point; rotations: ``[n_rounds, d, n_buckets // 2]``.
    Returns int64 ``[..., n_rounds, L]`` in ``[0, n_buckets)``. Bucket ``i < n_buckets/2`` is the cone
    around ``+R[:, i]``, bucket ``i + n_buckets/2`` the cone around ``-R[:, i]``. The zero vector, which
    has no direction, gets bucket 0.
    """
    _check_hash_inputs(x, rotations)
    rotated = torch.einsum("...ld,rdb->...rlb", x, rotations.to(x.dtype))  # [..., n_rounds, L, n_buckets/2]
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # [..., n_rounds, L]


def _check_hash_inputs(x, rotations):
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if not torch.is_tensor(rotations) or rotations.dim() != 3:
        raise ValueError(
            "rotations must have shape [n_rounds, dim, n_buckets // 2] (from random_rotations), "
            f"got {tuple(rotations.shape) if torch.is_tensor(rotations) else type(rotations).__name__}"
        )
    if x.dim() < 2:
        raise ValueError(f"x must have shape [..., L, dim], got {tuple(x.shape)}")
    if x.shape[-1] != rotations.shape[1]:
        raise ValueError(
            f"x has last dimension {x.shape[-1]} but rotations expect dim {rotations.shape[1]} "
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

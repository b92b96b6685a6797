"""The small experiments the lessons run and draw, each returning plain numbers (``course.plots`` draws them,
``python -m minireformer figures`` joins the two):

- lesson 01: points on the circle and sphere and their buckets (:func:`hash_points`), the collision probability
  against the angle, measured (:func:`collision_probability`, :func:`collision_curves`) and exact for two buckets;
- lesson 02: one small example walked through every step of LSH attention (:func:`lsh_walkthrough`), and how
  many of each query's most important keys LSH attention finds against the number of rounds
  (:func:`top_k_recall`, :func:`recall_experiment`);
- lesson 03: a reversible stack measured against its depth: the bytes saved for backward and the peak of a
  training step (:func:`depth_memory_experiment`), the float32 drift of the rebuilt input beside its rounding
  bound (:func:`drift_experiment`), the step time (:func:`step_times`);
- lesson 04: the chunked feed-forward's peak against the number of chunks (:func:`chunk_memory_experiment`);
- lesson 05: where LSH attention's time goes as L grows (:func:`hash_sort_times`).

Memory is measured exactly on the CPU (:mod:`minireformer.measuring.memory`), so those numbers, and the figures
drawn from them, are the same on every run; the times come from :mod:`minireformer.measuring.timing`.
"""

import math
import statistics
from functools import partial

import torch
import torch.nn.functional as F

from ..attention import full_attention
from ..chunking import FeedForward
from ..fast_lsh import fast_lsh_attention, hash_block
from ..hashing import check_n_buckets, hash_vectors, random_rotations
from ..lsh import chunk_mask, look_back_chunks, lsh_attention, sort_by_bucket, split_chunks
from ..measuring.memory import peak_memory, saved_activation_bytes
from ..measuring.steps import Merged, mean_square, reversible_stack, training_step
from ..measuring.timing import interleaved, resolve_device
from ..reversible import duplicate, reconstruction_error


# ---- lesson 01: hashing ------------------------------------------------------------------------------------------
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
        n_buckets: collision_probability(
            thetas, n_buckets, dim=dim, n_rounds=n_rounds, n_samples=n_samples, generator=generator
        )
        for n_buckets in bucket_counts
    }


def angle_grid(step_degrees=5):
    """Angles from 0 to pi in steps of ``step_degrees``, in radians (float64): the x axis of the collision figures."""
    return torch.deg2rad(torch.arange(0, 180 + step_degrees / 2, step_degrees, dtype=torch.float64))


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
    centers = torch.nn.functional.normalize(
        torch.randn(n_clusters, d, generator=generator, dtype=torch.float64), dim=-1
    )
    cluster = torch.randint(n_clusters, (length,), generator=generator)
    return strength * d**0.5 * centers[cluster] + torch.randn(length, d, generator=generator, dtype=torch.float64)


# ---- lesson 02: LSH attention ------------------------------------------------------------------------------
def lsh_walkthrough(length=32, d=16, n_buckets=4, n_rounds=2, chunk_len=8, *, causal=False, n_clusters=5, seed=0):
    """One small example through the steps of LSH attention, every stage kept for a picture (lesson 02's figures
    and step-through widget): tokens drawn around ``n_clusters`` directions, so that there are neighbours to find.

    Returns a dict of tensors (leading dim: rounds): ``buckets``, ``sorted_pos`` (sorted order), ``undo``,
    ``sorted_buckets`` ``[r, L]``; ``allowed_sorted`` (the permitted pairs) and ``attention_sorted`` ``[r, L, L]`` in
    sorted slots, ``attention_rounds`` ``[r, L, L]`` in the original order; ``attention`` (the rounds combined) and
    ``full`` ``[L, L]``; and the example itself, ``qk``, ``v``, ``rotations``, ``chunk_len``, ``n_buckets``.
    """
    if length % chunk_len:
        raise ValueError(f"length ({length}) must be a multiple of chunk_len ({chunk_len}) for the pictures")
    g = torch.Generator().manual_seed(seed)
    qk = clustered_vectors(length, d, n_clusters, generator=g)
    v = torch.randn(length, d, generator=g, dtype=torch.float64)
    rotations = random_rotations(d, n_buckets, n_rounds, generator=g, dtype=torch.float64)
    attention = partial(lsh_attention, qk, v, chunk_len=chunk_len, causal=causal, return_attention=True)
    buckets = hash_vectors(qk, rotations)  # [r, L]
    sorted_pos, undo = sort_by_bucket(buckets)  # [r, L]
    sorted_buckets = buckets.gather(-1, sorted_pos)
    # each round on its own (its combination weight is then 1): its weights in the original order, then in sorted slots
    rounds = torch.stack([attention(rotations[r : r + 1])[1] for r in range(n_rounds)])  # [r, L, L]
    attention_sorted = torch.stack([rounds[r][sorted_pos[r]][:, sorted_pos[r]] for r in range(n_rounds)])
    # the permitted pairs, slot by slot: each chunk of sorted slots against its window (itself and one back)
    slots = split_chunks(torch.arange(length), chunk_len)  # [n, c]
    q_pos, q_buckets = split_chunks(sorted_pos, chunk_len), split_chunks(sorted_buckets, chunk_len)  # [r, n, c]
    allowed = chunk_mask(
        q_pos, look_back_chunks(q_pos, 1), q_buckets, look_back_chunks(q_buckets, 1), length=length, causal=causal
    )  # [r, n, c, w]
    allowed_sorted = torch.zeros(n_rounds, length, length, dtype=torch.bool)
    allowed_sorted[:, slots[:, :, None], look_back_chunks(slots, 1)[:, None, :]] = allowed
    return {
        "buckets": buckets,
        "sorted_pos": sorted_pos,
        "undo": undo,
        "sorted_buckets": sorted_buckets,
        "allowed_sorted": allowed_sorted,
        "attention_sorted": attention_sorted,
        "attention_rounds": rounds,
        "attention": attention(rotations)[1],
        "full": full_attention(qk, v, causal=causal, return_attention=True)[1],
        "chunk_len": chunk_len,
        "n_buckets": n_buckets,
        "qk": qk,
        "v": v,
        "rotations": rotations,
    }


def top_k_recall(qk, rotations, *, k, chunk_len, causal=False, look_back=1):
    """How often LSH attention finds the keys that matter: the fraction of each query's top-k keys under
    full shared-QK attention (itself excluded) that get any weight from LSH attention.

    Builds ``[..., L, L]`` matrices: for lessons and tests at small L only.
    """
    _, attn = fast_lsh_attention(
        qk, qk, rotations, chunk_len=chunk_len, causal=causal, look_back=look_back, return_attention=True
    )  # values do not matter, only where the weight goes
    scores = qk @ F.normalize(qk, dim=-1).mT  # [..., L, L]
    forbidden = torch.eye(qk.shape[-2], dtype=torch.bool, device=qk.device)
    if causal:
        forbidden = forbidden | torch.ones_like(forbidden).triu(1)
    top = scores.masked_fill(forbidden, -math.inf).topk(k, dim=-1).indices  # [..., L, k]
    found = attn.gather(-1, top) > 0
    if causal:  # early queries have fewer than k earlier keys: count only real ones
        real = top < torch.arange(qk.shape[-2], device=qk.device)[:, None]
        return (found & real).sum().double() / real.sum()
    return found.double().mean()


def recall_experiment(rounds=(1, 2, 4, 8), length=1024, d=64, n_buckets=32, chunk_len=64, k=8, seed=2):
    """Lesson 02's measurement: :func:`top_k_recall` against the number of rounds, for
    clustered vectors (like trained attention) and for random ones. Returns ``{label: [recall per round]}``."""
    g = torch.Generator().manual_seed(seed)
    data = {
        "clustered (like trained attention)": clustered_vectors(length, d, 32, generator=g),
        "random vectors": torch.randn(length, d, generator=g, dtype=torch.float64),
    }
    return {
        name: [
            top_k_recall(
                x, random_rotations(d, n_buckets, r, generator=g, dtype=torch.float64), k=k, chunk_len=chunk_len
            ).item()
            for r in rounds
        ]
        for name, x in data.items()
    }


# ---- lessons 03 and 04: reversible stacks and the chunked feed-forward --------------------------------
def stack_step(seq, x):
    """The step lessons 03 and 04 measure: forward and backward of a reversible stack on ``x`` (duplicated,
    merged, loss = mean square), the gradients kept allocated and zeroed in place."""
    training_step(Merged(seq), x, mean_square, keep_grads=True)


def depth_memory_experiment(depths=(1, 2, 4, 8, 12), *, length=256, d_model=32, d_ff=128, attention="full", seed=0):
    """Lesson 03's measurement: for a :func:`reversible_stack` of each depth, run ordinary and reversible,
    the bytes saved for backward by the forward pass (:func:`~minireformer.measuring.memory.saved_activation_bytes`)
    and the peak extra memory of a training step (:func:`~minireformer.measuring.memory.peak_memory`; the parameter
    gradients exist beforehand, so the peak is activations and temporaries). Batch 1, ``[1, length, d_model]``.

    Returns ``{"saved": {"ordinary": [bytes per depth], "reversible": [...]}, "peak": {...}}``.
    """
    result = {"saved": {"ordinary": [], "reversible": []}, "peak": {"ordinary": [], "reversible": []}}
    x = torch.randn(1, length, d_model, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    for n_blocks in depths:
        seq = reversible_stack(n_blocks, d_model, d_ff=d_ff, attention=attention, seed=seed)
        stack_step(seq, x)  # allocates every .grad: later steps zero them in place
        for name, reversible in (("ordinary", False), ("reversible", True)):
            seq.reversible = reversible
            torch.manual_seed(seed)
            result["saved"][name].append(saved_activation_bytes(seq, *duplicate(x)))
            result["peak"][name].append(peak_memory(stack_step, seq, x))
    return result


def drift_experiment(depths=(1, 2, 4, 8, 16, 24), *, length=64, d_model=32, d_ff=128, attention="full", seed=0):
    """Lesson 03's measurement: :func:`~minireformer.reversible.reconstruction_error` of the first ``n`` blocks
    of one deep :func:`reversible_stack`, for each ``n`` in ``depths``, in float32 and float64, with
    ``x [2, length, d_model]`` of unit-variance entries; and beside it the rounding bound ``2 n eps max|y|``:
    every block rounds four results (two sums forward, two differences in the inverse), each off by at most
    ``eps / 2`` times its size, and no activation is larger than ``max|y|`` (the largest ``|y|`` over the
    ``n`` blocks' outputs). Returns ``{"error": {dtype: [per depth]}, "bound": {dtype: [per depth]}}``."""
    result = {"error": {}, "bound": {}}
    for dtype in (torch.float32, torch.float64):
        blocks = list(
            reversible_stack(max(depths), d_model, d_ff=d_ff, attention=attention, seed=seed, dtype=dtype).blocks
        )
        x = torch.randn(2, length, d_model, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        largest, y = [], (x, x)
        with torch.no_grad():
            for block in blocks:
                y = block(*y)
                largest.append(max(largest[-1:] + [y[0].abs().max().item(), y[1].abs().max().item()]))
        name, eps = str(dtype).removeprefix("torch."), torch.finfo(dtype).eps
        result["error"][name] = [reconstruction_error(blocks[:n], x) for n in depths]
        result["bound"][name] = [2 * n * eps * largest[n - 1] for n in depths]
    return result


def step_times(depths, *, length=512, d_model=64, d_ff=256, repeats=5, device=None, seed=0):
    """Seconds per training step (forward + backward, the median of ``repeats``, ordinary and reversible steps
    taken in turn) of a :func:`reversible_stack` of each depth: ``{"ordinary": [...], "reversible": [...]}``,
    on ``device`` (default: CUDA when available, else the CPU). Timings, so not reproducible to the byte:
    lesson 03 shows them, the figures command does not draw them."""
    device = resolve_device(device)
    x = torch.randn(1, length, d_model, generator=torch.Generator().manual_seed(seed)).to(device).requires_grad_()
    times = {"ordinary": [], "reversible": []}
    for n_blocks in depths:
        seqs = {
            name: reversible_stack(n_blocks, d_model, d_ff=d_ff, seed=seed, reversible=name == "reversible")
            for name in times
        }
        measured = interleaved(
            {name: partial(stack_step, seq.to(device), x) for name, seq in seqs.items()}, repeats, device
        )
        for name in times:
            times[name].append(statistics.median(measured[name]))
    return times


def chunk_memory_experiment(n_chunks=(1, 2, 4, 8, 16), *, length=1024, d_model=32, d_ff=1024, seed=0):
    """Lesson 04's measurement: the peak memory of forward + backward of a ``FeedForward(d_model, d_ff)`` on
    ``[1, length, d_model]`` cut into each number of chunks, checkpointed (:func:`~minireformer.chunking.
    chunked_feed_forward`) and as a plain loop over the chunks. Returns ``{label: [bytes per entry]}``."""
    torch.manual_seed(seed)
    ff = FeedForward(d_model, d_ff)
    x = torch.randn(1, length, d_model, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    ff(x).sum().backward()  # allocate the .grad of x and of every parameter before measuring

    def checkpointed(chunk_size):
        ff.chunk_size = chunk_size
        ff(x).sum().backward()

    def plain_loop(chunk_size):
        torch.cat([ff.net(chunk) for chunk in x.split(chunk_size, dim=-2)], dim=-2).sum().backward()

    sizes = [math.ceil(length / n) for n in n_chunks]
    return {
        "chunked, each chunk checkpointed": [peak_memory(checkpointed, size) for size in sizes],
        "plain loop over the chunks": [peak_memory(plain_loop, size) for size in sizes],
    }


def hash_sort_times(lengths, *, d=64, chunk_len=64, n_buckets=None, repeats=3, seed=0):
    """Where LSH attention's time goes as L grows (lesson 05): seconds (median of ``repeats``) of one round's
    hash (:func:`~minireformer.fast_lsh.hash_block`, the fast path's: ``L x d`` times ``d x n_buckets/2``), its sort
    (:func:`~minireformer.lsh.sort_by_bucket`) and the whole forward pass of
    :func:`~minireformer.fast_lsh.fast_lsh_attention`,
    on one head ``[L, d]``. ``n_buckets=None`` is the paper's ``2 L / chunk_len``, so the hash does
    ``L * d * L / chunk_len`` multiply-adds: quadratic in L. Returns ``{"hash", "sort", "attention"}``
    -> [seconds per length]."""
    g = torch.Generator().manual_seed(seed)
    times = {"hash": [], "sort": [], "attention": []}
    for length in lengths:
        x = torch.randn(1, length, d, generator=g)
        rotations = random_rotations(d, n_buckets or 2 * max(1, length // chunk_len), generator=g)
        buckets = hash_block(x, rotations)
        steps = {
            "hash": partial(hash_block, x, rotations),
            "sort": partial(sort_by_bucket, buckets),
            "attention": partial(fast_lsh_attention, x, x, rotations, chunk_len=chunk_len),
        }
        for name, seconds in interleaved(steps, repeats).items():
            times[name].append(statistics.median(seconds))
    return times

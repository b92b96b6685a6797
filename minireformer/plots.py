"""The lessons' figures: one function per figure, used by the lessons and by ``python -m minireformer figures``.

Every function takes plain parameters (sizes, seeds, measured numbers) and returns a
``matplotlib.figure.Figure`` built without pyplot, so nothing global is touched: a lesson shows the
returned figure, the figures command saves it, a test can inspect it.
"""

import math

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Wedge

from .hashing import hash_vectors, planar_rotations, random_rotations


def bucket_colors(n_buckets):
    """One colour per bucket, the same in every figure of the course (tab20 has room for 16 buckets)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(((2 * i) % 20 + (2 * i) // 20) / 20) for i in range(n_buckets)]


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


def draw_hash_circle(ax, points, rotations, buckets, n_buckets):
    """Draw one round on the unit circle: shaded cones, the directions ±R[:, i], the coloured points."""
    colors = bucket_colors(n_buckets)
    grid = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)[:-1]
    grid_buckets = hash_vectors(torch.stack([grid.cos(), grid.sin()], -1), rotations)[0].tolist()
    step = 360 / len(grid)
    runs = []  # [first, last, bucket] for each arc of half-degree steps that share a bucket
    for k, b in enumerate(grid_buckets):
        if runs and runs[-1][2] == b:
            runs[-1][1] = k
        else:
            runs.append([k, k, b])
    for first, last, b in runs:
        ax.add_patch(Wedge((0, 0), 1.25, (first - 0.5) * step, (last + 0.5) * step, color=colors[b], alpha=0.18, lw=0))
    directions = torch.cat([rotations[0].T, -rotations[0].T])  # the b directions; bucket i is around row i
    for i, d in enumerate(directions):
        d = d / d.norm() * 1.18
        ax.annotate("", xy=(d[0].item(), d[1].item()), xytext=(0, 0),
                    arrowprops={"arrowstyle": "->", "color": colors[i], "lw": 1.5})
        ax.text(1.32 * d[0].item() / 1.18, 1.32 * d[1].item() / 1.18, str(i), ha="center", va="center", fontsize=9)
    t = torch.linspace(0, 2 * math.pi, 200)
    ax.plot(t.cos(), t.sin(), color="0.6", lw=0.8)
    ax.scatter(points[:, 0], points[:, 1], c=[colors[b] for b in buckets.tolist()], s=28, edgecolors="k", lw=0.4, zorder=3)
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.45, 1.45)
    ax.set_aspect("equal")
    ax.axis("off")


def draw_hash_sphere(ax, points, rotations, buckets, n_buckets):
    """Draw one round on the unit sphere (a 3-D axes): coloured points and the directions ±R[:, i]."""
    colors = bucket_colors(n_buckets)
    ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=[colors[b] for b in buckets.tolist()], s=14, depthshade=True)
    directions = torch.cat([rotations[0].T, -rotations[0].T])
    for i, d in enumerate(directions):
        d = d / d.norm() * 1.35
        ax.plot([0, d[0].item()], [0, d[1].item()], [0, d[2].item()], color=colors[i], lw=2)
        ax.text(d[0].item(), d[1].item(), d[2].item(), str(i), fontsize=9)
    ax.set_box_aspect((1, 1, 1))
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(-1.1, 1.1)
    ax.set_axis_off()


def plot_hash_rotation(n_points=40, n_buckets=4, *, seed=0, angles=(0.0, math.pi / 5)):
    """Figure: the same points hashed under two rotations of the circle, and under a Gaussian R on the sphere."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    for k, angle in enumerate(angles):
        ax = fig.add_subplot(1, 3, k + 1)
        data = hash_points(n_points, n_buckets, seed=seed, angle=angle)
        draw_hash_circle(ax, data["points"], data["rotations"], data["buckets"], n_buckets)
        ax.set_title(f"rotation by {math.degrees(angle):.0f}°: {n_buckets} buckets")
    ax = fig.add_subplot(1, 3, 3, projection="3d")
    data = hash_points(10 * n_points, n_buckets, dim=3, seed=seed, rotation_seed=seed)
    draw_hash_sphere(ax, data["points"], data["rotations"], data["buckets"], n_buckets)
    ax.set_title(f"Gaussian R on the sphere: {n_buckets} buckets")
    return fig


def plot_collision_curves(thetas, measured, *, exact=None, n_rounds=1):
    """Figure: measured P(same bucket) against the angle, one curve per bucket count.

    thetas: angles in radians; measured: ``{n_buckets: probabilities}``; exact: optional
    ``{label: probabilities}`` drawn as dashed theory lines.
    """
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    colors = bucket_colors(16)
    degrees = [math.degrees(t) for t in thetas]
    for k, (n_buckets, p) in enumerate(sorted(measured.items())):
        ax.plot(degrees, p, "o-", ms=3, color=colors[2 * k], label=f"{n_buckets} buckets, measured")
    for label, p in (exact or {}).items():
        ax.plot(degrees, p, "k--", lw=1.2, label=label)
    rounds = "" if n_rounds == 1 else f" in at least one of {n_rounds} rounds"
    ax.set(xlabel="angle between the two vectors (degrees)", ylabel=f"P(same bucket{rounds})", ylim=(0, 1.02), xlim=(0, 180))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_softmax_concentration(weights, *, top=20):
    """Figure: the largest softmax weights of one query, and the share of the total carried by the top k."""
    w = torch.as_tensor(weights, dtype=torch.float64).sort(descending=True).values
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.bar(range(1, top + 1), w[:top], color="tab:blue")
    left.set(xlabel="key, ranked by score", ylabel="softmax weight", title=f"the {top} largest of {len(w)} weights")
    ks = torch.arange(1, len(w) + 1)
    right.semilogx(ks, w.cumsum(0), color="tab:orange")
    right.set(xlabel="top k keys", ylabel="share of the attention", ylim=(0, 1.02), title="cumulative weight")
    right.grid(alpha=0.3)
    return fig


def plot_rounds(thetas, measured, single):
    """Figure: P(meet in at least one of r rounds) measured, against ``1 - (1 - p)^r`` from one round's p.

    measured: ``{n_rounds: probabilities}``; single: the one-round probabilities p.
    """
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    colors = bucket_colors(16)
    degrees = [math.degrees(t) for t in thetas]
    single = torch.as_tensor(single, dtype=torch.float64)
    for k, (n_rounds, p) in enumerate(sorted(measured.items())):
        ax.plot(degrees, p, "o", ms=3, color=colors[2 * k], label=f"{n_rounds} round{'s' * (n_rounds > 1)}, measured")
        ax.plot(degrees, 1 - (1 - single) ** n_rounds, "-", lw=1, color=colors[2 * k])
    ax.plot([], [], "k-", lw=1, label="1 - (1 - p)^rounds")
    ax.set(xlabel="angle between the two vectors (degrees)", ylabel="P(same bucket in at least one round)",
           ylim=(0, 1.02), xlim=(0, 180))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


# ---- lesson 02: one small example walked through every stage of LSH attention ---------------------------------
LSH_STAGES = ("hash", "sort", "chunk", "mask", "attend", "unsort", "combine")
LSH_STAGE_TEXT = {
    "hash": "every token gets a bucket in every round: h(x) = argmax([xR; -xR]), a fresh R per round",
    "sort": "each round sorts its tokens by (bucket, position): similar tokens become neighbours",
    "chunk": "the sorted sequence is cut into chunks of chunk_len; each chunk also sees the chunk before it",
    "mask": "inside its window a query may attend keys of its own bucket only (never itself, unless alone)",
    "attend": "softmax over the permitted keys of each window, in sorted order",
    "unsort": "the inverse permutation puts every round's attention back in the original order",
    "combine": "rounds are averaged with weights exp(z_r - logsumexp_r z_r), z_r each round's logsumexp",
}


def clustered_vectors(length, d, n_clusters, *, strength=4.0, generator=None):
    """``[length, d]`` float64 vectors around ``n_clusters`` random directions, as trained queries and keys
    are: each is ``strength * sqrt(d) * centre + noise``, so full attention stays mostly inside a cluster."""
    centers = torch.nn.functional.normalize(torch.randn(n_clusters, d, generator=generator, dtype=torch.float64), dim=-1)
    cluster = torch.randint(n_clusters, (length,), generator=generator)
    return strength * d ** 0.5 * centers[cluster] + torch.randn(length, d, generator=generator, dtype=torch.float64)


def lsh_walkthrough(length=32, d=16, n_buckets=4, n_rounds=2, chunk_len=8, *, causal=False, n_clusters=5, seed=0):
    """Run one small example through the steps of :mod:`minireformer.lsh`, keeping every intermediate.

    Returns a dict of tensors (leading dim: rounds): ``buckets``, ``sticker`` (sorted order), ``undo``,
    ``sorted_buckets`` ``[r, L]``; ``allowed_sorted``, ``attention_sorted``, ``attention_rounds`` ``[r, L, L]``
    (the last in original order); ``round_weights`` ``[r, L]``; ``attention`` and ``full`` ``[L, L]``.
    The tokens are drawn around ``n_clusters`` directions, so that there are neighbours to find.
    """
    from . import lsh

    if length % chunk_len:
        raise ValueError(f"length ({length}) must be a multiple of chunk_len ({chunk_len}) for the pictures")
    g = torch.Generator().manual_seed(seed)
    qk = clustered_vectors(length, d, n_clusters, generator=g)
    v = torch.randn(length, d, generator=g, dtype=torch.float64)
    rotations = random_rotations(d, n_buckets, n_rounds, generator=g, dtype=torch.float64)
    buckets = hash_vectors(qk, rotations)  # [r, L]
    sticker, undo = lsh.sort_by_bucket(buckets)  # [r, L]
    sorted_buckets = buckets.gather(-1, sticker)

    def chunks(x):  # [r, L, ...] -> [r, n_chunks, c, ...]
        return lsh.split_chunks(x, chunk_len, dim=1)

    def windows(x):  # [r, n_chunks, c, ...] -> [r, n_chunks, w, ...]
        return lsh.look_back_chunks(chunks(x), 1, dim=1)

    allowed = lsh.chunk_mask(chunks(sticker), windows(sticker), chunks(sorted_buckets), windows(sorted_buckets),
                             length=length, causal=causal)  # [r, n, c, w]
    q = lsh.sort_vectors(qk, sticker)  # [r, L, d]
    k = lsh.sort_vectors(torch.nn.functional.normalize(qk, dim=-1), sticker)
    _, lse, probs = lsh.attend(chunks(q), windows(k), windows(lsh.sort_vectors(v, sticker)), allowed)
    # scatter each window back into an [L, L] matrix of sorted slots
    slots = torch.arange(length).expand(n_rounds, length)
    rows, cols = chunks(slots)[..., :, None], windows(slots)[..., None, :]  # [r, n, c, 1], [r, n, 1, w]
    dense_sorted = torch.zeros(n_rounds, length, length, dtype=torch.float64)
    allowed_sorted = torch.zeros(n_rounds, length, length, dtype=torch.bool)
    for r in range(n_rounds):
        dense_sorted[r][rows[r].expand_as(probs[r]), cols[r].expand_as(probs[r])] = probs[r]
        allowed_sorted[r][rows[r].expand_as(probs[r]), cols[r].expand_as(probs[r])] = allowed[r]
    index = undo[:, :, None]  # original order: P[r, i, j] = P_sorted[r, undo[i], undo[j]]
    rounds = dense_sorted.gather(1, index.expand(-1, -1, length)).gather(2, undo[:, None, :].expand(-1, length, -1))
    z = lse.flatten(1).gather(1, undo)  # [r, L] each round's logsumexp, original order
    weights = z.softmax(dim=0)
    attention = (weights[..., None] * rounds).sum(0)
    # full attention's weights: LSH attention with one chunk and no bucket restriction is full attention
    _, full = lsh.lsh_attention_reference(qk, v, rotations, chunk_len=length, causal=causal, same_bucket_only=False,
                                          return_attention=True)
    return {"buckets": buckets, "sticker": sticker, "undo": undo, "sorted_buckets": sorted_buckets,
            "allowed_sorted": allowed_sorted, "attention_sorted": dense_sorted, "attention_rounds": rounds,
            "round_weights": weights, "attention": attention, "full": full, "chunk_len": chunk_len,
            "n_buckets": n_buckets, "qk": qk, "v": v, "rotations": rotations}


def _token_strip(ax, buckets, labels, n_buckets, chunk_len=None):
    from matplotlib.colors import ListedColormap

    ax.imshow(buckets[None].numpy(), cmap=ListedColormap(bucket_colors(n_buckets)), vmin=-0.5,
              vmax=n_buckets - 0.5, aspect="auto")
    for i, label in enumerate(labels):
        ax.text(i, 0, str(label), ha="center", va="center", fontsize=7)
    if chunk_len:
        for edge in range(chunk_len, len(labels), chunk_len):
            ax.axvline(edge - 0.5, color="k", lw=2.5)
    ax.set_yticks([])
    ax.set_xticks([])


def _matrix(ax, matrix, chunk_len=None, cmap="Blues", vmax=None):
    ax.imshow(matrix.double().numpy(), cmap=cmap, vmin=0, vmax=vmax)
    if chunk_len:
        for edge in range(chunk_len, matrix.shape[0], chunk_len):
            ax.axvline(edge - 0.5, color="0.5", lw=0.6)
            ax.axhline(edge - 0.5, color="0.5", lw=0.6)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_lsh_stage(walk, stage):
    """Figure: one stage of :func:`lsh_walkthrough` (a name in ``LSH_STAGES``), one row of panels per round."""
    if stage not in LSH_STAGES:
        raise ValueError(f"stage must be one of {LSH_STAGES}, got {stage!r}")
    n_rounds, length = walk["buckets"].shape
    n_buckets, chunk_len = walk["n_buckets"], walk["chunk_len"]
    strip = stage in ("hash", "sort", "chunk")
    if stage == "combine":
        fig = Figure(figsize=(9, 4.4), layout="constrained")
        left, right = fig.subplots(1, 2)
        top = max(walk["attention"].max(), walk["full"].max()).item()  # one colour scale for both
        _matrix(left, walk["attention"], vmax=top)
        left.set_title(f"LSH attention, {n_rounds} round{'s' * (n_rounds > 1)} combined")
        _matrix(right, walk["full"], vmax=top)
        right.set_title("full attention")
        for ax in (left, right):
            ax.set(xlabel="key position", ylabel="query position")
        return fig
    fig = Figure(figsize=(10, 1.3 * n_rounds + 0.6) if strip else (4.4 * n_rounds, 4.6), layout="constrained")
    axes = fig.subplots(n_rounds, 1) if strip else fig.subplots(1, n_rounds)
    axes = [axes] if n_rounds == 1 else list(axes)
    for r, ax in enumerate(axes):
        if stage == "hash":
            _token_strip(ax, walk["buckets"][r], range(length), n_buckets)
            ax.set_title(f"round {r + 1}: tokens in their original order, coloured by bucket", fontsize=9)
        elif strip:
            _token_strip(ax, walk["sorted_buckets"][r], walk["sticker"][r].tolist(), n_buckets,
                         chunk_len if stage == "chunk" else None)
            what = "sorted by (bucket, position)" if stage == "sort" else f"cut into chunks of {chunk_len}"
            ax.set_title(f"round {r + 1}: {what} (numbers: original positions)", fontsize=9)
        elif stage == "mask":
            _matrix(ax, walk["allowed_sorted"][r], chunk_len, cmap="Greys", vmax=1.4)
            ax.set_title(f"round {r + 1}: permitted pairs (sorted order)", fontsize=9)
        elif stage == "attend":
            _matrix(ax, walk["attention_sorted"][r], chunk_len, vmax=1)
            ax.set_title(f"round {r + 1}: attention (sorted order)", fontsize=9)
        else:
            _matrix(ax, walk["attention_rounds"][r], vmax=1)
            ax.set_title(f"round {r + 1}: attention (original order)", fontsize=9)
    return fig


def recall_experiment(rounds=(1, 2, 4, 8), length=1024, d=64, n_buckets=32, chunk_len=64, k=8, seed=2):
    """Lesson 02's measurement: :func:`minireformer.lsh.top_k_recall` against the number of rounds, for
    clustered vectors (like trained attention) and for random ones. Returns ``{label: [recall per round]}``."""
    from .lsh import top_k_recall

    g = torch.Generator().manual_seed(seed)
    data = {"clustered (like trained attention)": clustered_vectors(length, d, 32, generator=g),
            "random vectors": torch.randn(length, d, generator=g, dtype=torch.float64)}
    return {name: [top_k_recall(x, random_rotations(d, n_buckets, r, generator=g, dtype=torch.float64),
                                k=k, chunk_len=chunk_len).item() for r in rounds]
            for name, x in data.items()}


def plot_recall(rounds, recall):
    """Figure: the share of each query's top-k keys that LSH attention finds, against the number of rounds.

    recall: ``{label: [share for each entry of rounds]}``.
    """
    fig = Figure(figsize=(6.4, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, values in recall.items():
        ax.plot(rounds, values, "o-", label=label)
    ax.set(xlabel="hash rounds", ylabel="top-8 keys found", ylim=(0, 1.02), xscale="log", xticks=rounds)
    ax.set_xticklabels([str(r) for r in rounds])
    ax.grid(alpha=0.3)
    ax.legend()
    return fig

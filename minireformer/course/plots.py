"""The lessons' figures: one function per figure, used by the lessons and by ``python -m minireformer figures``.

Every function takes data (measured numbers, the intermediates of a computation, a few sizes) and returns a
``matplotlib.figure.Figure`` built without pyplot, so nothing global is touched: a lesson shows the
returned figure, the figures command saves it, a test can inspect it. This module only draws: the data
comes from the module that measures it (``course.lab``, ``measuring.complexity``, ``training.longseq``, ...), and
``python -m minireformer figures`` (``__main__.figures``) is the one place that joins the two.
"""

import math

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle, Wedge

from ..hashing import hash_vectors
from ..measuring.report import loglog_slope
from .lab import hash_points


def bucket_colors(n_buckets):
    """One colour per bucket, the same in every figure of the course (tab20 has room for 16 buckets)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(((2 * i) % 20 + (2 * i) // 20) / 20) for i in range(n_buckets)]


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
        ax.annotate(
            "",
            xy=(d[0].item(), d[1].item()),
            xytext=(0, 0),
            arrowprops={"arrowstyle": "->", "color": colors[i], "lw": 1.5},
        )
        ax.text(1.32 * d[0].item() / 1.18, 1.32 * d[1].item() / 1.18, str(i), ha="center", va="center", fontsize=9)
    t = torch.linspace(0, 2 * math.pi, 200)
    ax.plot(t.cos(), t.sin(), color="0.6", lw=0.8)
    ax.scatter(
        points[:, 0], points[:, 1], c=[colors[b] for b in buckets.tolist()], s=28, edgecolors="k", lw=0.4, zorder=3
    )
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.45, 1.45)
    ax.set_aspect("equal")
    ax.axis("off")


def _spread_view(directions):
    """(elevation, azimuth) in degrees from which the unit ``directions [n, 3]`` look furthest apart: the view
    that maximises the smallest distance between two of them projected onto the screen (a 5° grid)."""
    d = torch.nn.functional.normalize(directions.double(), dim=-1)
    elev, azim = torch.meshgrid(torch.arange(-85.0, 90, 5), torch.arange(0.0, 360, 5), indexing="ij")
    elev, azim = elev.flatten().double(), azim.flatten().double()
    e, a = elev.deg2rad(), azim.deg2rad()
    toward = torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], -1)  # [views, 3]: toward the viewer
    along = torch.einsum("vk,nk->vn", toward, d)
    flat = d[None] - along[..., None] * toward[:, None]  # [views, n, 3]: the directions on the screen plane
    gaps = torch.cdist(flat, flat) + torch.eye(len(d), dtype=d.dtype) * 10  # leave out each one's own distance
    best = gaps.flatten(1).min(-1).values.argmax()
    return elev[best].item(), azim[best].item()


def draw_hash_sphere(ax, points, rotations, buckets, n_buckets):
    """Draw one round on the unit sphere (a 3-D axes): coloured points and the directions ±R[:, i], named in a
    legend (numbers at the tips would overlap wherever two directions point nearly at the viewer)."""
    colors = bucket_colors(n_buckets)
    ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=[colors[b] for b in buckets.tolist()], s=14, depthshade=True)
    directions = torch.cat([rotations[0].T, -rotations[0].T])
    for i, d in enumerate(directions):
        d = d / d.norm() * 1.35
        ax.plot([0, d[0].item()], [0, d[1].item()], [0, d[2].item()], color=colors[i], lw=2, label=f"bucket {i}")
    ax.legend(loc="lower center", ncols=min(n_buckets, 4), fontsize=8, handlelength=1.2, columnspacing=1.0)
    ax.view_init(*_spread_view(directions))
    ax.set_box_aspect((1, 1, 1))
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(-1.1, 1.1)
    ax.set_axis_off()


def plot_hash_rotation(n_points=40, n_buckets=4, *, seed=0, angles=(0.0, math.pi / 5)):
    """Figure: the same points hashed under two rotations of the circle, and under a Gaussian R on the sphere."""
    fig = Figure(figsize=(12, 4.4), layout="compressed")  # compressed: constrained, made for equal-aspect panels
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
    """Figure: measured P(same bucket) against the angle (``thetas``, radians), one curve per bucket count
    (``measured``: ``{n_buckets: probabilities}``); ``exact``: ``{label: probabilities}``, dashed theory lines."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    colors = bucket_colors(16)
    degrees = [math.degrees(t) for t in thetas]
    for k, (n_buckets, p) in enumerate(sorted(measured.items())):
        ax.plot(degrees, p, "o-", ms=3, color=colors[2 * k], label=f"{n_buckets} buckets, measured")
    for label, p in (exact or {}).items():
        ax.plot(degrees, p, "k--", lw=1.2, label=label)
    rounds = "" if n_rounds == 1 else f" in at least one of {n_rounds} rounds"
    ax.set(
        xlabel="angle between the two vectors (degrees)",
        ylabel=f"P(same bucket{rounds})",
        ylim=(0, 1.02),
        xlim=(0, 180),
    )
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
    plain_log_ticks(right, [k for k in (1, 10, 100, 1000, 10000) if k <= len(w)])
    right.set(xlabel="top k keys", ylabel="share of the attention", ylim=(0, 1.02), title="cumulative weight")
    right.grid(alpha=0.3)
    return fig


def plot_rounds(thetas, measured, single):
    """Figure: P(meet in at least one of r rounds) measured (``{n_rounds: probabilities}``), against
    ``1 - (1 - p)^r`` from one round's probabilities p (``single``)."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    colors = bucket_colors(16)
    degrees = [math.degrees(t) for t in thetas]
    single = torch.as_tensor(single, dtype=torch.float64)
    for k, (n_rounds, p) in enumerate(sorted(measured.items())):
        ax.plot(degrees, p, "o", ms=3, color=colors[2 * k], label=f"{n_rounds} round{'s' * (n_rounds > 1)}, measured")
        ax.plot(degrees, 1 - (1 - single) ** n_rounds, "-", lw=1, color=colors[2 * k])
    ax.plot([], [], "k-", lw=1, label="1 - (1 - p)^rounds")
    ax.set(
        xlabel="angle between the two vectors (degrees)",
        ylabel="P(same bucket in at least one round)",
        ylim=(0, 1.02),
        xlim=(0, 180),
    )
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


def _plain_log_locator():
    """Major ticks of a log axis at 1, 2, 5 x 10^k; on an axis that spans less than a decade, where those leave
    one or two, at 1, 2, 3, 5, 7 x 10^k, and under half a decade at every digit x 10^k."""
    from matplotlib.ticker import LogLocator

    class PlainLogLocator(LogLocator):
        def tick_values(self, vmin, vmax):
            span = abs(math.log10(vmax / vmin)) if vmin > 0 and vmax > 0 else math.inf
            subs = (1.0, 2.0, 5.0) if span >= 1 else (1.0, 2.0, 3.0, 5.0, 7.0) if span >= 0.5 else range(1, 10)
            self.set_params(subs=[float(s) for s in subs])
            return super().tick_values(vmin, vmax)

    return PlainLogLocator()


def plain_log_ticks(ax, xs=None):
    """Log axes in plain numbers: x ticks at the values drawn (``xs``), y labels ``32``, ``0.5`` (not ``10^1.5``),
    at least three of them on any visible range."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if xs is not None:
        ax.set_xticks(list(xs), [f"{v:g}" for v in xs], minor=False)
        ax.xaxis.set_minor_formatter(NullFormatter())
    if ax.get_yscale() == "log":  # labels at 1, 2, 5 x 10^k, denser on a short range (see _plain_log_locator)
        ax.yaxis.set_major_locator(_plain_log_locator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _token_strip(ax, buckets, labels, n_buckets, chunk_len=None):
    from matplotlib.colors import ListedColormap

    ax.imshow(
        buckets[None].numpy(),
        cmap=ListedColormap(bucket_colors(n_buckets)),
        vmin=-0.5,
        vmax=n_buckets - 0.5,
        aspect="auto",
    )
    for i, label in enumerate(labels):
        ax.text(i, 0, str(label), ha="center", va="center", fontsize=7)
    if chunk_len:
        for edge in range(chunk_len, len(labels), chunk_len):
            ax.axvline(edge - 0.5, color="k", lw=2.5)
    ax.set_yticks([])
    ax.set_xticks([])


def _matrix(ax, matrix, chunk_len=None, cmap="Blues", vmax=None, order="sorted slot"):
    """A [queries, keys] heatmap, its axes labelled in ``order``; grid lines between chunks."""
    image = ax.imshow(matrix.double().numpy(), cmap=cmap, vmin=0, vmax=vmax)
    for edge in range(chunk_len, matrix.shape[0], chunk_len) if chunk_len else ():
        ax.axvline(edge - 0.5, color="0.5", lw=0.6), ax.axhline(edge - 0.5, color="0.5", lw=0.6)
    ticks = range(0, matrix.shape[0], chunk_len or 8)
    ax.set(xticks=ticks, yticks=ticks, xlabel=f"key ({order})", ylabel=f"query ({order})")
    return image


def plot_attention_maps(maps, *, chunk_len=None):
    """Figure: attention weights ``[L, L]`` in the original order side by side (``maps``: {title: weights}), on one
    colour scale, with lines between chunks of ``chunk_len``."""
    top = max(matrix.max() for matrix in maps.values()).item()
    fig = Figure(figsize=(4.8 * len(maps), 4.4), layout="constrained")
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (title, matrix) in zip(axes, maps.items()):
        image = _matrix(ax, matrix, chunk_len, vmax=top, order="position")
        ax.set_title(title)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="attention weight")
    return fig


def plot_lsh_stage(walk, stage):
    """Figure: one stage of :func:`minireformer.course.lab.lsh_walkthrough` (a name in ``LSH_STAGES``), one row of
    panels per round."""
    if stage not in LSH_STAGES:
        raise ValueError(f"stage must be one of {LSH_STAGES}, got {stage!r}")
    n_rounds, length = walk["buckets"].shape
    n_buckets, chunk_len = walk["n_buckets"], walk["chunk_len"]
    strip = stage in ("hash", "sort", "chunk")
    if stage == "combine":
        title = f"LSH attention, {n_rounds} round{'s' * (n_rounds > 1)} combined"
        return plot_attention_maps({title: walk["attention"], "full attention": walk["full"]})
    fig = Figure(figsize=(10, 1.3 * n_rounds + 0.6) if strip else (4.4 * n_rounds + 1, 4.6), layout="constrained")
    axes = fig.subplots(n_rounds, 1) if strip else fig.subplots(1, n_rounds)
    axes = [axes] if n_rounds == 1 else list(axes)
    for r, ax in enumerate(axes):
        if stage == "hash":
            _token_strip(ax, walk["buckets"][r], range(length), n_buckets)
            ax.set_title(f"round {r + 1}: tokens in their original order, coloured by bucket", fontsize=9)
        elif strip:
            _token_strip(
                ax,
                walk["sorted_buckets"][r],
                walk["sorted_pos"][r].tolist(),
                n_buckets,
                chunk_len if stage == "chunk" else None,
            )
            what = "sorted by (bucket, position)" if stage == "sort" else f"cut into chunks of {chunk_len}"
            ax.set_title(f"round {r + 1}: {what} (numbers: original positions)", fontsize=9)
        elif stage == "mask":
            _matrix(ax, walk["allowed_sorted"][r], chunk_len, cmap="Greys", vmax=1.4)
            ax.set_title(f"round {r + 1}: permitted pairs (dark), sorted order", fontsize=9)
        else:
            sorted_ = stage == "attend"
            image = _matrix(
                ax,
                walk["attention_sorted" if sorted_ else "attention_rounds"][r],
                chunk_len if sorted_ else None,
                vmax=1,
                order="sorted slot" if sorted_ else "position",
            )
            ax.set_title(f"round {r + 1}: attention ({'sorted' if sorted_ else 'original'} order)", fontsize=9)
    if stage in ("attend", "unsort"):
        fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    return fig


def plot_causal_mask(walk, round_index=0):
    """Figure: one round's permitted pairs of a causal :func:`~minireformer.course.lab.lsh_walkthrough`, in sorted order
    and back in original order, where the causal mask (on original positions) keeps them below the diagonal."""
    allowed, undo = walk["allowed_sorted"][round_index].double(), walk["undo"][round_index]
    fig = Figure(figsize=(9.6, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    _matrix(left, allowed, walk["chunk_len"], cmap="Greys", vmax=1.4)
    left.set_title(f"round {round_index + 1}: permitted pairs (dark), sorted order", fontsize=9)
    _matrix(right, allowed[undo][:, undo], cmap="Greys", vmax=1.4, order="position")
    right.plot([-0.5, len(undo) - 0.5], [-0.5, len(undo) - 0.5], "--", color="tab:red", lw=1, label="key = query")
    right.set_title("the same pairs in original order: never a later key", fontsize=9)
    right.legend(loc="upper right", fontsize=8)
    return fig


def plot_recall(rounds, recall):
    """Figure: the share of each query's top-k keys that LSH attention finds against the number of rounds;
    recall: ``{label: [share for each entry of rounds]}``."""
    fig = Figure(figsize=(6.4, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, values in recall.items():
        ax.plot(rounds, values, "o-", label=label)
    ax.set(xlabel="hash rounds", ylabel="top-8 keys found", ylim=(0, 1.02), xscale="log")
    plain_log_ticks(ax, rounds)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


# ---- lessons 03 and 04: reversible layers and the chunked feed-forward, measured ----------------------------------
def plot_memory_vs_depth(depths, measured):
    """Figure: measured bytes against the number of blocks, ordinary vs reversible (one panel per measure); measured:
    ``{"saved": {label: [bytes per depth]}, "peak": {...}}``, as
    :func:`minireformer.course.lab.depth_memory_experiment`."""
    titles = {"saved": "activations saved for backward", "peak": "peak memory of a training step"}
    fig = Figure(figsize=(9.6, 3.9), layout="constrained")
    axes = fig.subplots(1, len(measured))
    for ax, (kind, series) in zip(axes, measured.items()):
        for label, values in series.items():
            ax.plot(depths, [v / 2**20 for v in values], "o-", label=label)
        ax.set(xlabel="number of blocks", ylabel="MiB", title=titles.get(kind, kind), xticks=depths, ylim=(0, None))
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_reconstruction_drift(depths, error, bound=None):
    """Figure: the largest error of the rebuilt input against depth, log scale; ``error`` ``{label: [...]}``,
    ``bound`` (optional) ``{label: [bound per depth]}``, drawn dashed in the colour of the same label."""
    fig = Figure(figsize=(6.4, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, values in error.items():
        (line,) = ax.plot(depths, values, "o-", label=f"{label}, measured")
        if bound and label in bound:
            ax.plot(depths, bound[label], "--", color=line.get_color(), label=f"{label}, bound 2 n ε max|y|")
    ax.set(
        xlabel="number of blocks run forward and inverted", ylabel="max |x - rebuilt x|", yscale="log", xticks=depths
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_step_time_vs_depth(depths, times, machine=""):
    """Figure: seconds per training step against the number of blocks; ``times`` ``{label: [seconds]}``."""
    fig = Figure(figsize=(6.4, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, values in times.items():
        ax.plot(depths, [1e3 * t for t in values], "o-", label=label)
    ax.set(
        xlabel="number of blocks",
        ylabel="ms per training step",
        xticks=depths,
        ylim=(0, None),
        title=f"measured{' on ' + machine if machine else ''}",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_chunk_memory(n_chunks, peaks, d_ff=None):
    """Figure: peak memory of the feed-forward's forward + backward against the number of chunks; ``peaks``
    ``{label: [bytes]}``; the first entry of the first series divided by the number of chunks is drawn as
    the ideal."""
    fig = Figure(figsize=(6.4, 4), layout="constrained")
    ax = fig.add_subplot()
    first = next(iter(peaks.values()))[0]
    ax.plot(n_chunks, [first / n / 2**20 for n in n_chunks], ":", color="0.4", label="unchunked peak / chunks")
    for label, values in peaks.items():
        ax.plot(n_chunks, [v / 2**20 for v in values], "o-", label=label)
    title = "feed-forward, forward + backward" + (f" (d_ff = {d_ff})" if d_ff else "")
    ax.set(xlabel="number of chunks", ylabel="peak MiB", xscale="log", ylim=(0, None), title=title)
    plain_log_ticks(ax, n_chunks)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


# ---- lesson 07: long sequences: learning curves, Figure 3, memory and speed vs length ----------------------------
def plot_learning_curves(curves, *, title="held-out bits per byte"):
    """Figure: held-out bits per byte against training steps, one line per model; ``curves`` as returned by
    :func:`minireformer.training.longseq.learning_curves` (``{name: {"step": [...], "bits_per_byte": [...]}}``)."""
    fig = Figure(figsize=(6.4, 4), layout="constrained")
    ax = fig.add_subplot()
    for name, c in curves.items():
        ax.plot(c["step"], c["bits_per_byte"], "o-", ms=3, label=f"{name} ({c['bits_per_byte'][-1]:.2f})")
    ends = [c["bits_per_byte"][-1] for c in curves.values()]
    ax.set(
        xlabel="training step",
        ylabel="bits per byte (held out)",
        title=title,
        ylim=(min(ends) - 0.5, max(c["bits_per_byte"][0] for c in curves.values()) + 0.2),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_figure3(runs, baseline="Transformer", shared="shared-QK Transformer", reversible="reversible Transformer"):
    """The paper's Figure 3 at our scale: shared-QK vs separate Q/K (left), reversible vs ordinary residuals
    (right), each against the same ``baseline``, zoomed in on the second half of training. ``runs``: one
    :func:`minireformer.training.longseq.learning_curves` result per seed; a line is the mean, its band the range."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    steps = runs[0][baseline]["step"]
    late = [j for j, step in enumerate(steps) if step >= steps[len(steps) // 2]]
    fig.suptitle(f"second half of training: mean (line) and range (band) of {len(runs)} seeds", fontsize=10)
    for ax, other, title in zip(
        fig.subplots(1, 2), (shared, reversible), ("shared-QK vs separate Q and K", "reversible vs ordinary residuals")
    ):
        pair = {name: torch.tensor([run[name]["bits_per_byte"] for run in runs]) for name in (baseline, other)}
        for i, (name, bits) in enumerate(pair.items()):
            ax.fill_between(steps, bits.amin(0).numpy(), bits.amax(0).numpy(), color=f"C{i}", alpha=0.25, lw=0)
            ax.plot(steps, bits.mean(0).numpy(), "o-", ms=3, color=f"C{i}", label=f"{name} ({bits[:, -1].mean():.2f})")
        shown = torch.cat([bits[:, late] for bits in pair.values()])
        ax.set(
            xlim=(steps[late[0]], None),
            ylim=(shown.min().item() - 0.05, shown.max().item() + 0.05),
            xlabel="training step",
            ylabel="bits per byte (held out)",
            title=title,
        )
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def distinct(i):
    """Marker and line style of the ``i``-th line of a figure whose lines may lie on top of each other (equal
    measurements): a line drawn over another still shows its markers and dashes."""
    markers, styles = "osD^v", ("-", "--", "-.", ":", "-")
    return dict(marker=markers[i % 5], linestyle=styles[i % 5], markersize=7 - i % 5, mfc="none" if i % 2 else None)


def plot_length_sweep(rows, *, memory_budget=None):
    """Figure: peak memory (left, log-log) and tokens/s (right) of one training step against the sequence
    length; ``rows`` from :func:`minireformer.training.longseq.length_sweep`. Steps that ran out of memory or were
    skipped are drawn hollow at their extrapolated need; the budget is a dashed line."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    memory, speed = {}, {}  # {model: (lengths, values)} of the steps that ran
    for r in rows:
        if r["status"] == "ok":
            for series, key in ((memory, "peak_bytes"), (speed, "tokens_per_s")):
                lengths_, values = series.setdefault(r["model"], ([], []))
                lengths_.append(r["seq_len"])
                values.append(r[key])
    names = list(dict.fromkeys(r["model"] for r in rows))
    lengths = sorted({r["seq_len"] for r in rows})
    for i, name in enumerate(names):
        color = f"C{i}"
        if name in memory:
            left.plot(memory[name][0], [v / 2**20 for v in memory[name][1]], color=color, label=name, **distinct(i))
        missing = [
            (r["seq_len"], r["estimated_bytes"])
            for r in rows
            if r["model"] == name and r["status"] != "ok" and r["estimated_bytes"]
        ]
        if missing:
            left.plot(
                *zip(*[(n, b / 2**20) for n, b in missing]),
                "o--",
                color=color,
                mfc="none",
                label=f"{name}: did not run (extrapolated)",
            )
        if name in speed and speed[name][1][0] is not None:
            right.plot(speed[name][0], speed[name][1], color=color, label=name, **distinct(i))
    if memory_budget:
        left.axhline(memory_budget / 2**20, ls="--", color="0.3", label=f"budget {memory_budget / 2**20:,.0f} MiB")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length",
        ylabel="peak MiB of one training step",
        title="memory (measured; hollow: extrapolated)",
    )
    right.set(
        xscale="log",
        xlabel="sequence length",
        ylabel="tokens per second",
        ylim=(0, None),
        title="speed (batch fixed: flat = linear time)",
    )
    for ax in (left, right):
        plain_log_ticks(ax, lengths)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# ---- lesson 06: the duplication task (paper Table 2) ------------------------------------------------------------
def plot_duplication_batch(tokens, *, n_symbols=127):
    """Figure: a batch of ``0 w 0 w`` sequences ``[n, L]`` as coloured tokens; the second half repeats the first."""
    n, length = tokens.shape
    fig = Figure(figsize=(9, 0.45 * n + 1.4), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(tokens.numpy(), cmap="viridis", vmin=0, vmax=n_symbols, aspect="auto", interpolation="nearest")
    ax.axvline(length / 2 - 0.5, color="white", lw=2)
    for row in range(n):
        for col in (0, length // 2):
            ax.text(col, row, "0", ha="center", va="center", color="white", fontsize=8, fontweight="bold")
    ax.annotate(
        "",
        xy=(length // 2 + 1, -0.7),
        xytext=(1, -0.7),
        annotation_clip=False,
        arrowprops=dict(arrowstyle="->", color="C3", lw=1.5, connectionstyle="arc3,rad=-0.15"),
    )
    ax.set(
        xlabel="position",
        yticks=range(n),
        yticklabels=[f"sequence {i}" for i in range(n)],
        title=f"0 w 0 w: the second w (positions {length // 2 + 1}..{length - 1}) copies the first, "
        f"{length // 2} positions back",
        ylim=(n - 0.5, -1.3),
    )
    return fig


def plot_duplication_curves(curves):
    """Figure: second-half accuracy over training steps, ``curves`` ``{label: metrics rows of a Trainer}``
    (train rows, one per step, drawn thin; evaluation rows as separate dots, never joined: a line between two
    evaluations would draw a gradual rise where the training curve jumps)."""
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, rows) in enumerate(curves.items()):
        train = [(r["step"], r["accuracy"]) for r in rows if r["split"] == "train"]
        val = [(r["step"], r["accuracy"]) for r in rows if r["split"] == "val"]
        ax.plot(*zip(*train), color=f"C{i}", lw=0.8, alpha=0.6, label=f"{label}: each training batch")
        # each later model's dots smaller, so that equal accuracies at the same step stay visible
        size = max(3, 9 - 3 * i)
        ax.plot(*zip(*val), "o", ms=size, mec="k", mew=0.6, color=f"C{i}", label=f"{label}: held-out evaluation")
    ax.set(
        xlabel="step",
        ylabel="accuracy on the second half",
        ylim=(-0.02, 1.02),
        title="training on 0w0w: chance for a while, then the copy is found",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    return fig


def plot_duplication_attention(weights, *, title="where each query attends"):
    """Figure: attention weights ``[L, L]`` of one 0w0w sequence, with the copy position (query t of the second
    half reads key t - L/2 + 1, which holds the token to predict) drawn as a dashed line."""
    length = weights.shape[-1]
    half = (length + 1) // 2  # the model reads L - 1 tokens of a sequence of even length L
    fig = Figure(figsize=(5.6, 5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(torch.as_tensor(weights).numpy(), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    queries = torch.arange(half, length)
    ax.plot(queries - half + 1, queries, "--", color="C0", lw=1, label="copy position t - L/2 + 1")
    ax.set(xlabel="key position", ylabel="query position", title=title)
    ax.legend(loc="lower left", fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return fig


def plot_table2(ours, paper):
    """Figure: our Table 2 beside the paper's, as two annotated heatmaps (rows: training attention, columns:
    evaluation attention, accuracy in %). Rows of the paper's table that we did not train are left out."""
    rows, cols = list(ours), list(next(iter(ours.values())))
    fig = Figure(figsize=(9.5, 1.0 + 0.55 * len(rows)), layout="constrained")
    for k, (name, table) in enumerate((("ours", ours), ("paper", paper))):
        ax = fig.add_subplot(1, 2, k + 1)
        values = torch.tensor([[100 * table[r][c] for c in cols] for r in rows])
        ax.imshow(values.numpy(), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=9)
        ax.set(
            xticks=range(len(cols)),
            xticklabels=[c.upper() for c in cols],
            yticks=range(len(rows)),
            yticklabels=[r.upper() for r in rows],
            xlabel="evaluated with",
            title=f"{name}: accuracy %",
        )
        ax.set_ylabel("trained with" if k == 0 else "")
    return fig


# ---- lessons 00 and 05: a plain Transformer measured, and the paper's Table 3 held against measurements -----------
MODEL_COLORS = {
    "Transformer": "tab:red",
    "Reversible Transformer": "tab:orange",
    "Chunked Reversible Transformer": "tab:olive",
    "LSH Transformer": "tab:blue",
    "Reformer": "tab:green",
}


def plot_transformer_memory(data):
    """Figure: a plain Transformer's memory against length (one layer: grows as l²) and depth (grows as n_l)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    lengths, mb = data["lengths"], 1e-6
    left.loglog(
        lengths,
        [p * mb for p in data["peak"]],
        "o-",
        color=MODEL_COLORS["Transformer"],
        label="measured: peak of forward + backward",
    )
    left.loglog(lengths, [s * mb for s in data["scores"]], "k--", label="one $b \\cdot n_h \\cdot l^2$ scores tensor")
    left.set(xlabel="sequence length l", ylabel="MB", title="one layer: memory grows as $l^2$")
    plain_log_ticks(left, lengths)
    left.legend(fontsize=8)
    depths = data["depths"]
    right.plot(
        depths,
        [s * mb for s in data["saved"]],
        "o-",
        color=MODEL_COLORS["Transformer"],
        label="measured: kept for backward",
    )
    per_layer = data["saved"][0] / depths[0]
    right.plot(depths, [per_layer * n * mb for n in depths], "k--", label="one layer's worth x $n_l$")
    right.set(
        xlabel="layers $n_l$",
        ylabel="MB",
        xticks=depths,
        ylim=(0, None),
        title=f"l = {data['length']}: activations grow with depth",
    )
    right.legend(fontsize=8)
    left.grid(alpha=0.3), right.grid(alpha=0.3)
    return fig


def tensor_kind(shape, length, d_ff):
    """Which term of the table a saved tensor belongs to: the ``l x l`` scores, the ``d_ff``-wide
    intermediate, or the rest (``d_model`` wide and smaller)."""
    if len(shape) >= 2 and shape[-2:] == (length, length):
        return "attention: l x l"
    if shape and shape[-1] == d_ff:
        return "feed-forward: d_ff wide"
    return "d_model wide, or smaller"


def plot_saved_tensors(tensors, *, d_model=64, d_ff=256, n_h=4, top=10):
    """Figure: the largest tensors one Transformer layer keeps for backward, one panel per length
    (``tensors`` from :func:`minireformer.measuring.complexity.saved_tensor_experiment`), coloured by the table
    term they belong to."""
    colors = {
        "attention: l x l": MODEL_COLORS["Transformer"],
        "feed-forward: d_ff wide": "tab:purple",
        "d_model wide, or smaller": "tab:gray",
    }
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, len(tensors), squeeze=False)[0]
    for ax, (length, found) in zip(axes, tensors.items()):
        shown = found[:top][::-1]
        kinds = [tensor_kind(t["shape"], length, d_ff) for t in shown]
        ax.barh(range(len(shown)), [t["bytes"] / 1e3 for t in shown], color=[colors[k] for k in kinds])
        ax.set_yticks(
            range(len(shown)),
            [f"{t['op'].replace('Backward0', '')}.{t['name']} {list(t['shape'])}" for t in shown],
            fontsize=8,
        )
        total = sum(t["bytes"] for t in found)
        ax.set(
            xlabel="KB",
            title=f"l = {length}: {len(found)} tensors, {total / 1e3:.0f} KB in all\n"
            f"l·d_ff = {length * d_ff:,} floats, n_h·l² = {n_h * length * length:,}",
        )
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, axis="x")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.legend(handles, list(colors), loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(
        f"what one Transformer layer keeps for backward (d_model = {d_model}, d_ff = {d_ff}, "
        f"n_h = {n_h}, b = 1, largest {top})",
        fontsize=10,
    )
    return fig


def plot_complexity_scaling(sweeps, sizes):
    """Figure: measured peak memory of the table's rows against each swept variable, log-log, each line
    labelled with its fitted slope (the k of memory ~ x^k). ``sweeps`` from
    :func:`minireformer.measuring.complexity.scaling_experiment`, ``sizes`` the fixed ones
    (``complexity.SCALING_SIZES``)."""
    labels = {"l": "sequence length l", "n_l": "layers $n_l$", "d_ff": "feed-forward width $d_{ff}$"}
    fig = Figure(figsize=(4.2 * len(sweeps), 4.2), layout="constrained")
    axes = fig.subplots(1, len(sweeps), squeeze=False)[0]
    for ax, (name, (values, measured)) in zip(axes, sweeps.items()):
        for i, (model, peaks) in enumerate(measured.items()):
            ax.loglog(
                values,
                [p / 1e6 for p in peaks],
                color=MODEL_COLORS[model],
                label=f"{model}: slope {loglog_slope(values, peaks):.2f}",
                **distinct(i),
            )
        plain_log_ticks(ax, values)
        fixed = ", ".join(f"{k}={sizes[k]}" for k in ("l", "n_l", "d_ff") if k != name)
        ax.set(xlabel=labels[name], ylabel="peak MB (forward + backward)", title=f"against {name} ({fixed})")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


# ---- lessons 02-03: benchmarks (python -m minireformer bench ... --figure PATH) ------------------------------
def plot_bench_attention(rows, title=None):
    """Figure 5 of the paper, measured: time per step (left) and peak extra memory (right) against L, at a
    fixed number of tokens per step, one line per attention. rows: from
    ``minireformer.measuring.bench.bench_attention``."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        done = sorted((r["length"], r["step_s"], r["peak_mb"]) for r in rows if r["model"] == model and "step_s" in r)
        if not done:
            continue
        lengths, seconds, peaks = zip(*done)
        style = "o-" if model.startswith("LSH") else "s--"
        left.plot(lengths, seconds, style, label=model)
        right.plot(lengths, peaks, style, label=model)
    for ax, label in ((left, "seconds per step (forward + backward)"), (right, "peak extra memory (MiB)")):
        ax.set(xlabel="sequence length L (batch = tokens / L)", ylabel=label, xscale="log", yscale="log")
        plain_log_ticks(ax, sorted({r["length"] for r in rows}))
        ax.grid(alpha=0.3, which="both")
    left.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_bench_reversible(rows, title=None):
    """Step time (left) and peak memory (right) against the number of blocks, one line per configuration.
    rows: from ``minireformer.measuring.bench.bench_reversible``."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for model in dict.fromkeys(r["model"] for r in rows):
        done = sorted((r["n_blocks"], r["step_s"], r["peak_mb"]) for r in rows if r["model"] == model)
        blocks, seconds, peaks = zip(*done)
        style = "o-" if "reversible" in model else "s--"
        left.plot(blocks, seconds, style, label=model)
        right.plot(blocks, peaks, style, label=model)
    left.set(xlabel="blocks", ylabel="seconds per training step")
    right.set(xlabel="blocks", ylabel="peak extra memory (MiB)")
    left.grid(alpha=0.3), right.grid(alpha=0.3)
    left.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


# ---- the GPU check (python -m minireformer gpu-check) ---------------------------------------------------------------
def plot_gpu_attention(section, title=None):
    """Figure: the GPU check's attention section, LSH attention against fused attention (SDPA), time and peak
    memory of a training step against L (log-log); lengths where a kernel ran out of memory are left out."""
    fig = Figure(figsize=(9.6, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, (kind, label) in enumerate((("lsh", "LSH attention"), ("sdpa", "fused attention (SDPA)"))):
        for ax, key in ((left, "s"), (right, "peak_mb")):
            points = [
                (r["length"], r[f"{kind}_{key}"]) for r in section["rows"] if isinstance(r.get(f"{kind}_{key}"), float)
            ]
            if points:
                ax.loglog(*zip(*points), label=label, **distinct(i))
    left.set(xlabel="sequence length L", ylabel="seconds per step (forward + backward)", title="time")
    right.set(xlabel="sequence length L", ylabel="peak MiB", title="memory")
    for ax in (left, right):
        plain_log_ticks(ax, [r["length"] for r in section["rows"]])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_gpu_duplication(section, title=None):
    """Figure: the GPU check's Table 2 row, a model trained with LSH-4 and evaluated with each attention, beside
    the paper's row."""
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    names = list(section["accuracy"])
    ours = [100 * section["accuracy"][n] for n in names]
    paper = section.get("paper_lsh4_row") or {}
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], ours, width=0.4, label=f"ours, {section['steps']} steps")
    if paper:
        ax.bar([x + 0.2 for x in xs], [100 * paper.get(n, float("nan")) for n in names], width=0.4, label="the paper")
    ax.set_xticks(list(xs), [f"eval {n}" for n in names])
    ax.set(ylabel="second-half accuracy (%)", ylim=(0, 105), title="trained with LSH-4 (Table 2's shape)")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig

"""Exercises: build each mechanism yourself, and be told exactly what is wrong with it.

At a lesson's "build it" step you write one function with the name, signature and behaviour of a package
function, then ask for a check::

    from minireformer.course.exercises import check, hint, show_solution

    def my_hash_vectors(x, rotations):
        ...

    check("hash_vectors", my_hash_vectors)

:func:`check` calls your function on a list of cases, each named by the property it tests (random inputs and
the hard ones: ties, a bucket that spills over a chunk, a length that is not a multiple of the chunk,
padding, the first token under ``causal=True``, several rounds; float64 where tolerance matters), and compares
with the package. It prints a ✓ with the number of cases, or one diagnosis: the convention that broke (it
recognises the typical mistakes by what they compute), the first case where it shows (the cases go from the
simplest and smallest to the hardest), expected against got. It never raises because of your code.
:func:`hint` gives a hint, :func:`solution` the teaching solution (:mod:`minireformer.course.solutions`) and
:func:`show_solution` its source.

============================  =================================================  ========
exercise                      you write                                          lesson
============================  =================================================  ========
``hash_vectors``              ``fn(x, rotations) -> buckets``                    01
``sort_by_bucket``            ``fn(buckets) -> (sorted_pos, undo)``                 02
``look_back_chunks``          ``fn(x, look_back, dim=-2) -> windows``            02
``chunk_mask``                ``fn(q_pos, k_pos, q_buckets, k_buckets, *, ...)``  02
``attend``                    ``fn(q, k, v, allowed) -> (out, lse)``             02
``combine_rounds``            ``fn(o, lse) -> o``                                02
``lsh_attention``             ``fn(qk, v, rotations, *, chunk_len, causal)``     02
``rev_inverse``               ``fn(f, g, y1, y2) -> (x1, x2)``                   03
``chunked_feed_forward``      ``fn(ff, x, chunk_size) -> y``                     04
============================  =================================================  ========
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .. import chunking, hashing, lsh
from ..fast_lsh import fast_lsh_attention
from ..measuring.memory import StoragePeak, saved_activation_bytes
from ..reversible import RevBlock
from .checking import (
    EXERCISES,
    NO_GRADIENT,
    AtMost,
    Case,
    check,
    diagnose,
    exercises_of,
    hint,
    how_they_differ,
    progress,
    show_solution,
    show_value,
    solution,
)
from .checking import register as _exercise

__all__ = ["EXERCISES", "check", "diagnose", "exercises_of", "hint", "progress", "show_solution", "solution"]


# ---- the cases' inputs ------------------------------------------------------------------------------------
def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=_generator(seed), dtype=dtype)


def _clustered(length, dim, n_clusters, *, seed):
    """``[length, dim]`` float64 vectors around a few directions, so that buckets are large and uneven."""
    g = _generator(seed)
    centres = F.normalize(torch.randn(n_clusters, dim, generator=g, dtype=torch.float64), dim=-1)
    which = torch.randint(n_clusters, (length,), generator=g)
    return 3 * centres[which] + 0.3 * torch.randn(length, dim, generator=g, dtype=torch.float64)


# ---- 01: hash_vectors -------------------------------------------------------------------------------------
def _hash_case(prop, x, rotations):
    return Case(prop, lambda: ({"x": x(), "rotations": rotations()}, {}))


def _tie_points():
    # with R[:, 0] = R[:, 1] = (1, 0): (1, 0) ties between buckets 0 and 1, (-1, 0) between 2 and 3, and (0, 1),
    # orthogonal to both, scores 0 everywhere, a tie of all four: argmax takes the first index
    return torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)


def _tie_rotations():
    return torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)  # [n_rounds 1, d 2, n_buckets/2 2]


def _hash_halves_swapped(x, rotations):
    rotated = torch.einsum("...ld,rdb->...rlb", x, rotations)
    return torch.cat([-rotated, rotated], dim=-1).argmax(dim=-1)


def _hash_last_tie(x, rotations):
    rotated = torch.einsum("...ld,rdb->...rlb", x, rotations)
    scores = torch.cat([rotated, -rotated], dim=-1)
    return scores.shape[-1] - 1 - scores.flip(-1).argmax(dim=-1)


_exercise(
    name="hash_vectors",
    lesson="01",
    reference=hashing.hash_vectors,
    cases=[
        _hash_case(
            "one round, 4 buckets, points in the plane", lambda: _randn(6, 2, seed=1), lambda: _randn(1, 2, 2, seed=2)
        ),
        _hash_case(
            "ties between rotated coordinates go to the first index, +xR before -xR (as argmax does)",
            _tie_points,
            _tie_rotations,
        ),
        _hash_case(
            "several rounds: one R per round, buckets [..., n_rounds, L]",
            lambda: _randn(5, 3, seed=3),
            lambda: _randn(3, 3, 2, seed=4),
        ),
        _hash_case(
            "leading dims [batch, heads, L, d]", lambda: _randn(2, 3, 4, 4, seed=5), lambda: _randn(1, 4, 3, seed=6)
        ),
        _hash_case(
            "float32, and only the direction matters (vectors of very different lengths)",
            lambda: _randn(8, 3, seed=7, dtype=torch.float32) * torch.logspace(-3, 3, 8)[:, None],
            lambda: _randn(2, 3, 4, seed=8, dtype=torch.float32),
        ),
        _hash_case(
            "many vectors, 16 buckets, 2 rounds", lambda: _randn(2, 64, 16, seed=9), lambda: _randn(2, 16, 8, seed=10)
        ),
    ],
    hint="Rotate every vector with every round's R at once (torch.einsum('...ld,rdb->...rlb', x, R) gives "
    "[..., n_rounds, L, n_buckets/2]), put xR and -xR side by side along the last dim and take argmax there.",
    mistakes=[
        (
            "the -xR half is missing: h(x) = argmax([xR; -xR]) chooses among n_buckets directions, +R[:, i] "
            "(buckets 0 … n_buckets/2 − 1) and −R[:, i] (buckets n_buckets/2 … n_buckets − 1); argmax(xR) alone "
            "never gives the second half",
            lambda x, rotations: torch.einsum("...ld,rdb->...rlb", x, rotations).argmax(dim=-1),
        ),
        (
            "the two halves are swapped: bucket i < n_buckets/2 is the cone around +R[:, i], so the order is "
            "[xR; -xR], not [-xR; xR]",
            _hash_halves_swapped,
        ),
        (
            "ties go to the last index: argmax([xR; -xR]) returns the first of equal maxima (torch.argmax does "
            "exactly that), so +xR wins a tie against -xR",
            _hash_last_tie,
        ),
        (
            "the rounds axis is in the wrong place: the buckets are [..., n_rounds, L], a row of L ids per round",
            lambda x, rotations: hashing.hash_vectors(x, rotations).transpose(-1, -2),
        ),
        (
            "only the first round is hashed: every round has its own R (rotations[r]) and its own row of buckets",
            lambda x, rotations: hashing.hash_vectors(x, rotations[:1]),
        ),
    ],
)


# ---- 02: sort_by_bucket -----------------------------------------------------------------------------------
def _ints(values):
    return lambda: ({"buckets": torch.tensor(values)}, {})


def _sort_reversed_ties(buckets):
    length = buckets.shape[-1]
    sorted_pos = torch.argsort(buckets * length + (length - 1 - torch.arange(length)), dim=-1)
    return sorted_pos, torch.argsort(sorted_pos, dim=-1)


def _sort_unstable(buckets):
    sorted_pos = torch.argsort(buckets, dim=-1)
    return sorted_pos, torch.argsort(sorted_pos, dim=-1)


_exercise(
    name="sort_by_bucket",
    lesson="02",
    reference=lsh.sort_by_bucket,
    names=("sorted_pos", "undo"),
    cases=[
        Case("distinct buckets", _ints([2, 0, 3, 1])),
        Case("equal buckets keep their positions' order (ties broken by position)", _ints([1, 0, 1, 0, 1, 0])),
        Case(
            "40 tokens in 2 buckets: ties kept in position order however long the run (an unstable sort, "
            "torch.argsort's default, reorders ties from about 32 elements on)",
            _ints([1, 0] * 20),
        ),
        Case("the padding bucket n_buckets sorts after every real bucket", _ints([4, 1, 0, 4, 1, 2])),
        Case(
            "several rounds and a batch [b, n_rounds, L]: each round sorts on its own",
            lambda: ({"buckets": torch.randint(4, (2, 3, 7), generator=_generator(11))}, {}),
        ),
        Case("many tokens, 8 buckets", lambda: ({"buckets": torch.randint(8, (2, 64), generator=_generator(12))}, {})),
    ],
    hint="Sort by the single key bucket * L + position (torch.argsort along the last dim): it orders by bucket and, "
    "inside a bucket, by position. undo is the inverse permutation: torch.argsort(sorted_pos) (or a scatter).",
    mistakes=[
        (
            "the sort is not stable: inside a bucket the tokens must stay in sequence order, and "
            "torch.argsort(buckets) alone may reorder equal buckets (it does from about 32 elements on); sort "
            "by the key bucket · L + position, or pass stable=True",
            _sort_unstable,
        ),
        (
            "ties within a bucket are reversed: inside a bucket the tokens stay in sequence order, so the key is "
            "bucket · L + position (not − position)",
            _sort_reversed_ties,
        ),
        (
            "undo is not the inverse of sorted_pos: undo[i] is the sorted slot of position i, so "
            "undo[sorted_pos[s]] = s (torch.argsort(sorted_pos)); a permutation is usually not its own inverse",
            lambda buckets: (lsh.sort_by_bucket(buckets)[0],) * 2,
        ),
        (
            "sorted_pos and undo are swapped: sorted_pos[s] is the original position of the s-th sorted token, undo[i] "
            "the sorted slot of position i",
            lambda buckets: lsh.sort_by_bucket(buckets)[::-1],
        ),
        (
            "sorted in descending bucket order: bucket 0 comes first (and padding, bucket n_buckets, last)",
            lambda buckets: lsh.sort_by_bucket(buckets.max() - buckets),
        ),
    ],
)


# ---- 02: look_back_chunks ---------------------------------------------------------------------------------
def _chunks(n_chunks, chunk_len, look_back, *, leading=(), d=None, dim=-2):
    def build():
        shape = (*leading, n_chunks, chunk_len) + ((d,) if d else ())
        x = torch.arange(math.prod(shape)).view(shape)  # ids, so a wrong window shows which chunk came
        return {"x": x if d is None else x.double(), "look_back": look_back}, {"dim": dim}

    return build


def _no_wrap_zeros(x, look_back, dim=-2):
    look_back = min(look_back, x.shape[dim] - 1)
    parts = [x]
    for shift in range(1, look_back + 1):
        shifted = x.roll(shift, dims=dim)
        shifted.narrow(dim, 0, shift).zero_()  # the chunks before the first one: nothing
        parts.append(shifted)
    return torch.cat(parts, dim=dim + 1)


_exercise(
    name="look_back_chunks",
    lesson="02",
    reference=lsh.look_back_chunks,
    cases=[
        Case("look_back=1: a chunk, then the chunk before it; chunk 0 looks back at the last chunk", _chunks(4, 2, 1)),
        Case("look_back=0: each chunk alone", _chunks(3, 2, 0)),
        Case("look_back=2", _chunks(5, 2, 2)),
        Case("look_back >= n_chunks: only n_chunks − 1 chunks back, so no key appears twice", _chunks(3, 2, 4)),
        Case("a single chunk", _chunks(1, 3, 1)),
        Case("vectors: x [..., n_chunks, c, d] with dim=-3", _chunks(4, 2, 1, leading=(2,), d=2, dim=-3)),
        Case("leading dims [b, r, n_chunks, c]", _chunks(4, 3, 1, leading=(2, 2))),
    ],
    hint="torch.roll(x, shift, dims=dim) puts chunk i - shift in place i and wraps the last chunks around to the "
    "front. Concatenate shifts 0, 1, ..., look_back along dim + 1, and never take more than n_chunks - 1.",
    mistakes=[
        (
            "no wrap-around: chunk 0 looks back at the last chunk (torch.roll wraps; a shift that pads does not)",
            _no_wrap_zeros,
        ),
        (
            "the window starts with the chunk before: it is the chunk itself first, then 1, 2, … chunks back (the "
            "mask and the self bias expect the query's own chunk in front)",
            lambda x, look_back, dim=-2: torch.cat(
                [x.roll(s, dims=dim) for s in reversed(range(min(look_back, x.shape[dim] - 1) + 1))], dim=dim + 1
            ),
        ),
        (
            "the window looks forward: chunk i must see chunk i − 1 (roll by +1), not chunk i + 1",
            lambda x, look_back, dim=-2: torch.cat(
                [x.roll(-s, dims=dim) for s in range(min(look_back, x.shape[dim] - 1) + 1)], dim=dim + 1
            ),
        ),
        (
            "look_back is not cut to n_chunks − 1: with few chunks the window takes the same chunk twice, and its keys "
            "would count twice",
            lambda x, look_back, dim=-2: torch.cat([x.roll(s, dims=dim) for s in range(look_back + 1)], dim=dim + 1),
        ),
    ],
)


# ---- 02: chunk_mask ---------------------------------------------------------------------------------------
def _mask_case(prop, q_pos, k_pos, q_buckets, k_buckets, length, **options):
    t = torch.tensor
    return Case(
        prop,
        lambda: (
            {"q_pos": t(q_pos), "k_pos": t(k_pos), "q_buckets": t(q_buckets), "k_buckets": t(k_buckets)},
            dict(length=length, **options),
        ),
    )


def _random_mask_case(prop, seed, **options):
    def build():
        g = _generator(seed)
        pos = torch.randperm(12, generator=g).view(3, 4)  # 3 chunks of 4 sorted positions, 2 of them padding
        buckets = torch.randint(3, (3, 4), generator=g)
        k_pos, k_buckets = (lsh.look_back_chunks(t, 1) for t in (pos, buckets))
        return {"q_pos": pos, "k_pos": k_pos, "q_buckets": buckets, "k_buckets": k_buckets}, dict(length=10, **options)

    return Case(prop, build)


def _mask_variant(*, strict=False, pad=True, pad_on_queries=False, buckets=None, later=False):
    def wrong(q_pos, k_pos, q_buckets, k_buckets, *, length, causal=False, same_bucket_only=True):
        q, k = q_pos[..., :, None], k_pos[..., None, :]
        allowed = torch.ones(*q_pos.shape, k_pos.shape[-1], dtype=torch.bool)
        if pad:
            allowed = allowed & ((q < length) if pad_on_queries else (k < length))
        if causal:
            allowed = allowed & ((k >= q) if later else (k < q) if strict else (k <= q))
        if same_bucket_only if buckets is None else buckets:
            allowed = allowed & (k_buckets[..., None, :] == q_buckets[..., :, None])
        return allowed

    return wrong


_exercise(
    name="chunk_mask",
    lesson="02",
    reference=lsh.chunk_mask,
    cases=[
        _mask_case(
            "same bucket only: a key of another bucket is masked", [2, 0], [2, 0, 3, 1], [1, 0], [1, 0, 1, 1], length=4
        ),
        _mask_case(
            "padding keys (position >= length) are never attended", [2, 0], [2, 0, 4, 5], [1, 1], [1, 1, 1, 1], length=4
        ),
        _mask_case(
            "causal=True: no key after the query, but the query itself is allowed (k_pos <= q_pos)",
            [0, 2],
            [0, 2, 1, 3],
            [0, 0],
            [0, 0, 0, 0],
            length=4,
            causal=True,
        ),
        _mask_case(
            "same_bucket_only=False (trax/HF): every bucket in the window",
            [2, 0],
            [2, 0, 3, 1],
            [1, 0],
            [1, 0, 1, 1],
            length=4,
            same_bucket_only=False,
        ),
        _random_mask_case("3 chunks of 4 sorted tokens, windows from look_back_chunks, padding", 13),
        _random_mask_case("the same, causal", 14, causal=True),
    ],
    hint="Make queries rows and keys columns (q[..., :, None] against k[..., None, :]), start from 'the key is "
    "not padding' (k_pos < length) and AND in each rule that is switched on. Return [..., c, w].",
    mistakes=[
        (
            "the causal mask is strict: under causal=True a query may attend every key at or before its own position "
            "(k_pos <= q_pos); the self bias, not the mask, keeps it away from itself, and the first token has only "
            "itself",
            _mask_variant(strict=True),
        ),
        (
            "padding is attended: keys at positions >= length are padding and must never be attended",
            _mask_variant(pad=False),
        ),
        (
            "padding is tested on the queries: it is the keys at positions >= length that must be masked",
            _mask_variant(pad_on_queries=True),
        ),
        (
            "the causal mask points the wrong way: a query may attend earlier keys (k_pos <= q_pos), not later ones",
            _mask_variant(later=True),
        ),
        (
            "same_bucket_only is not honoured: True keeps only keys of the query's bucket, False allows every key in "
            "the window",
            _mask_variant(buckets=True),
        ),
        (
            "the bucket rule is missing: with same_bucket_only=True (the paper) a query only attends keys of its "
            "own bucket",
            _mask_variant(buckets=False),
        ),
        (
            "the mask is transposed: queries are rows and keys columns, [..., c, w]",
            lambda *a, **k: lsh.chunk_mask(*a, **k).mT,
        ),
    ],
)


# ---- 02: attend -------------------------------------------------------------------------------------------
def _attend_case(prop, c, w, d, *, seed, allowed=None, leading=()):
    def build():
        g = _generator(seed)
        q = torch.randn(*leading, c, d, generator=g, dtype=torch.float64)
        k = F.normalize(torch.randn(*leading, w, d, generator=g, dtype=torch.float64), dim=-1)
        k[..., :c, :] = F.normalize(q, dim=-1)  # shared QK: the window starts with the queries' own keys
        v = torch.randn(*leading, w, d, generator=g, dtype=torch.float64)
        mask = torch.ones(*leading, c, w, dtype=torch.bool) if allowed is None else torch.tensor(allowed)
        if allowed is None and leading:
            mask = torch.rand(*leading, c, w, generator=g) < 0.6
        return {"q": q, "k": k, "v": v, "allowed": mask}, {}

    return Case(prop, build)


def _attend_variant(*, self_bias=True, scale=True, mask=True, neg_inf=False, lse_unmasked=False):
    def wrong(q, k, v, allowed):
        c = q.shape[-2]
        scores = q @ k.mT / (math.sqrt(q.shape[-1]) if scale else 1.0)
        if self_bias:
            scores = scores - lsh.SELF_BIAS * torch.eye(c, k.shape[-2], dtype=scores.dtype)
        unmasked = scores
        if mask:
            scores = scores.masked_fill(~allowed, -math.inf if neg_inf else torch.finfo(scores.dtype).min)
        return scores.softmax(-1) @ v, (unmasked if lse_unmasked else scores).logsumexp(-1)

    return wrong


def _attend_compare(expected, got, args):
    """Rows with at least one allowed key must agree; a row with none (a padding query, whose output the model
    drops) only has to be finite: its softmax is over nothing, so -1e9 for masked keys (trax, HF), the most
    negative float (the package) and exp(s - lse) @ v (the paper's form) all give different, equally right,
    numbers there."""
    empty = ~args["allowed"].any(dim=-1)  # [..., c]
    shapes = (empty.shape + expected[0].shape[-1:], empty.shape)
    if (
        isinstance(got, (tuple, list))
        and len(got) == 2
        and all(torch.is_tensor(g) and g.shape == shape for g, shape in zip(got, shapes))
    ):
        for name, value in zip(("out", "lse"), got):
            rows = value.detach()[empty]
            if not bool(torch.isfinite(rows).all()):
                return (
                    f"{name} on a row where nothing is allowed (a padding query): expected finite numbers (the "
                    f"model drops this row, but a nan or inf there turns the gradients nan), got {show_value(rows)}"
                )
        expected = tuple(e.masked_fill(_rows(empty, e), 0) for e in expected)
        got = tuple(g.detach().masked_fill(_rows(empty, g), 0) for g in got)
    return how_they_differ(expected, got, ("out", "lse"))


def _rows(empty, value):
    return empty[..., None] if value.dim() > empty.dim() else empty


_exercise(
    name="attend",
    lesson="02",
    reference=lsh.attend,
    names=("out", "lse"),
    compare=_attend_compare,
    cases=[
        _attend_case("2 queries, a window of 4 keys, everything allowed", 2, 4, 2, seed=15),
        _attend_case(
            "masked keys get no weight",
            2,
            4,
            2,
            seed=16,
            allowed=[[True, True, False, True], [False, True, True, False]],
        ),
        _attend_case(
            "the query itself scores 1e5 lower: attended only when nothing else is allowed",
            2,
            4,
            3,
            seed=17,
            allowed=[[True, False, False, False], [False, True, True, False]],
        ),
        _attend_case(
            "a row where nothing is allowed (a padding query): any finite out and lse (the model drops that row, "
            "but a nan there would turn the gradients nan)",
            2,
            4,
            2,
            seed=18,
            allowed=[[False, False, False, False], [True, True, True, True]],
        ),
        _attend_case("scores scaled by 1/sqrt(d), d = 16", 3, 6, 16, seed=19),
        _attend_case("leading dims [b, r, n_chunks, c, d], random masks", 4, 8, 4, seed=20, leading=(2, 2, 3)),
    ],
    hint="scores = q @ k^T / sqrt(d); subtract 1e5 (lsh.SELF_BIAS) on the diagonal of the first c columns "
    "(torch.eye(c, w)); put a very negative finite number (torch.finfo(dtype).min, or -1e9) where allowed is "
    "False; then out = softmax(scores) @ v and lse = logsumexp(scores) over the keys.",
    mistakes=[
        (
            "no self bias: with shared QK every query is its own best match, so the query itself (the diagonal of the "
            "first c columns: the window starts with the query's own chunk) scores 1e5 lower (lsh.SELF_BIAS)",
            _attend_variant(self_bias=False),
        ),
        (
            "the scores are not scaled: the paper's attention is softmax(q k^T / sqrt(d)) (lesson 02, shared QK)",
            _attend_variant(scale=False),
        ),
        ("the mask is not applied: keys where allowed is False must get no weight", _attend_variant(mask=False)),
        (
            "-inf for masked keys: a row where nothing is allowed (a padding query) becomes nan; use the most negative "
            "float, torch.finfo(dtype).min, so it stays finite (its output is dropped later)",
            _attend_variant(neg_inf=True),
        ),
        (
            "lse ignores the mask: it is the logsumexp of the scores the softmax used (masked, with the self bias)",
            _attend_variant(lse_unmasked=True),
        ),
    ],
)


# ---- 02: combine_rounds -----------------------------------------------------------------------------------
def _combine_case(prop, n_rounds, length, d, *, seed, lse_scale=1.0, lse_shift=0.0, leading=()):
    def build():
        g = _generator(seed)
        o = torch.randn(*leading, n_rounds, length, d, generator=g, dtype=torch.float64)
        lse = torch.randn(*leading, n_rounds, length, generator=g, dtype=torch.float64) * lse_scale + lse_shift
        return {"o": o, "lse": lse}, {}

    return Case(prop, build)


def _combine_naive(o, lse):
    weights = lse.exp() / lse.exp().sum(dim=-2, keepdim=True)
    return (weights[..., None] * o).sum(dim=-3)


_exercise(
    name="combine_rounds",
    lesson="02",
    reference=lsh.combine_rounds,
    cases=[
        _combine_case("2 rounds, 3 tokens", 2, 3, 2, seed=21),
        _combine_case("one round: the output is that round's", 1, 4, 2, seed=22),
        _combine_case("rounds of very different weight (logsumexps far apart)", 3, 3, 2, seed=23, lse_scale=20.0),
        _combine_case(
            "large logsumexps (about 800): exp(800) overflows even in float64", 2, 3, 2, seed=24, lse_shift=800.0
        ),
        _combine_case("leading dims [b, heads, n_rounds, L, d]", 4, 5, 3, seed=25, leading=(2, 2)),
    ],
    hint="The weight of round r for token i is exp(z_r - logsumexp_r z_r): a softmax of lse over the rounds "
    "axis (dim -2 of lse). Multiply each round's output by it and sum over the rounds (dim -3 of o).",
    mistakes=[
        (
            "the rounds are averaged: each round counts by exp(z_r − logsumexp_r z_r), the share of the query's "
            "probability mass its window held, not 1/n_rounds",
            lambda o, lse: o.mean(dim=-3),
        ),
        (
            "the softmax runs over the tokens: the rounds are dim −2 of lse (and dim −3 of o)",
            lambda o, lse: (lse.softmax(dim=-1)[..., None] * o).sum(dim=-3),
        ),
        (
            "the weights are not normalised: exp(z_r) must be divided by the sum over the rounds (a softmax)",
            lambda o, lse: (lse.exp()[..., None] * o).sum(dim=-3),
        ),
        (
            "exp overflows: exp(800) is inf and inf / inf is nan; subtract the largest z first, which is what "
            "torch.softmax does",
            _combine_naive,
        ),
    ],
)


# ---- 02: lsh_attention (the capstone) ---------------------------------------------------------------------
def _lsh_observe(fn, args, kwargs):
    """The output, and the gradients of a fixed loss of it with respect to qk and v."""
    qk, v = (args[name].requires_grad_() for name in ("qk", "v"))
    out = fn(*args.values(), **kwargs)
    observed = {"output": out}
    if torch.is_tensor(out) and out.shape == qk.shape:
        if not out.requires_grad:
            observed.update({"gradient of qk": NO_GRADIENT, "gradient of v": NO_GRADIENT})
        else:
            weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
            observed.update(
                zip(("gradient of qk", "gradient of v"), torch.autograd.grad((out * weights).sum(), (qk, v)))
            )
    return observed


def _lsh_variant(*, self_bias=True, unit_keys=True, scale=True, mean_rounds=False, look_back=1, ignore_causal=False):
    """LSH attention with one convention changed, written densely (an [L, L] mask per round, as
    ``lsh.lsh_attention_reference``): what a typical mistake computes."""

    def wrong(qk, v, rotations, *, chunk_len, causal=False):
        length, d = qk.shape[-2:]
        buckets = hashing.hash_vectors(qk, rotations)  # [..., r, L]
        n_chunks = -(-length // chunk_len)
        position = torch.arange(length)
        chunk = torch.argsort(torch.argsort(buckets * length + position, dim=-1), dim=-1) // chunk_len
        ok = (chunk[..., :, None] - chunk[..., None, :]) % n_chunks <= min(look_back, n_chunks - 1)
        ok = ok & (buckets[..., :, None] == buckets[..., None, :])
        if causal and not ignore_causal:
            ok = ok & (position[None, :] <= position[:, None])
        keys = F.normalize(qk, dim=-1) if unit_keys else qk
        scores = (qk @ keys.mT / (math.sqrt(d) if scale else 1.0)).unsqueeze(-3)  # [..., 1, L, L]
        if self_bias:
            scores = scores - lsh.SELF_BIAS * torch.eye(length, dtype=scores.dtype)
        scores = scores.masked_fill(~ok, -math.inf)
        o = scores.softmax(dim=-1) @ v.unsqueeze(-3)  # [..., r, L, d]
        return o.mean(dim=-3) if mean_rounds else lsh.combine_rounds(o, scores.logsumexp(dim=-1))

    return wrong


def _lsh_case(prop, shape, n_rounds, n_buckets, chunk_len, *, seed, causal=False, clustered=False):
    def build():
        g = _generator(seed)
        if clustered:
            qk = _clustered(shape[-2], shape[-1], 2, seed=seed)
        else:
            qk = torch.randn(*shape, generator=g, dtype=torch.float64)
        v = torch.randn(*shape, generator=g, dtype=torch.float64)
        rotations = hashing.random_rotations(shape[-1], n_buckets, n_rounds, generator=g, dtype=torch.float64)
        return {"qk": qk, "v": v, "rotations": rotations}, {"chunk_len": chunk_len, "causal": causal}

    return Case(prop, build)


_exercise(
    name="lsh_attention",
    lesson="02",
    reference=lambda qk, v, rotations, *, chunk_len, causal=False: fast_lsh_attention(
        qk, v, rotations, chunk_len=chunk_len, causal=causal
    ),
    observe=_lsh_observe,
    cases=[
        _lsh_case("one round, L = 8 in 2 chunks of 4", (8, 4), 1, 4, 4, seed=26),
        _lsh_case(
            "L = 10 is not a multiple of chunk_len = 4: padded, and padding is never attended",
            (10, 4),
            1,
            4,
            4,
            seed=27,
        ),
        _lsh_case("causal=True: the first token has only itself to attend", (8, 4), 1, 2, 4, seed=28, causal=True),
        _lsh_case("3 rounds, combined by their logsumexps", (12, 4), 3, 4, 4, seed=29),
        _lsh_case(
            "a bucket that spills over a chunk boundary: the look-back finds its first members",
            (16, 8),
            1,
            4,
            4,
            seed=30,
            clustered=True,
        ),
        _lsh_case(
            "leading dims [b, heads, L, d], 2 rounds, causal, L not a multiple of the chunk",
            (2, 2, 13, 4),
            2,
            4,
            4,
            seed=31,
            causal=True,
        ),
    ],
    hint="Pad L to a multiple of chunk_len (padding gets bucket n_buckets), hash, sort each round (lsh.sort_vectors "
    "puts the vectors in sorted order), cut into chunks (lsh.split_chunks), give each chunk its window of keys "
    "(normalised) and values with your look_back_chunks, build the mask from the sorted positions and buckets, "
    "attend, put each round back in order (lsh.unsort for the outputs, gather with undo for lse), combine, and "
    "drop the padding.",
    mistakes=[
        (
            "no self bias: with shared QK each query is its own best match; its self score gets −1e5 so that it "
            "attends itself only when nothing else is allowed",
            _lsh_variant(self_bias=False),
        ),
        (
            "the keys are not unit vectors: k_j = q_j / |q_j| (the queries stay as they are)",
            _lsh_variant(unit_keys=False),
        ),
        ("the scores are not scaled by 1/sqrt(d)", _lsh_variant(scale=False)),
        ("the rounds are averaged instead of combined by their logsumexps", _lsh_variant(mean_rounds=True)),
        (
            "no look-back: each chunk also attends the chunk before it (look_back=1, chunk 0 wrapping to the last)",
            _lsh_variant(look_back=0),
        ),
        ("causal is ignored: under causal=True no query attends a later position", _lsh_variant(ignore_causal=True)),
    ],
)


# ---- 03: rev_inverse --------------------------------------------------------------------------------------
def _branch(d, seed):
    torch.manual_seed(seed)  # the exercise's own seed for a small network, restored by the caller's fork
    return nn.Sequential(nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, d)).double()


def _rev_case(prop, shape, *, seed):
    def build():
        with torch.random.fork_rng(devices=[]):
            f, g = _branch(shape[-1], seed), _branch(shape[-1], seed + 100)
        y1, y2 = _randn(*shape, seed=seed), _randn(*shape, seed=seed + 1)
        return {"f": f, "g": g, "y1": y1, "y2": y2}, {}

    return Case(prop, build)


def _rev_no_grad(observe):
    def run(fn, args, kwargs):
        with torch.no_grad():
            return observe(fn, args, kwargs)

    return run


_exercise(
    name="rev_inverse",
    lesson="03",
    reference=lambda f, g, y1, y2: RevBlock(f, g).inverse(y1, y2),
    names=("x1", "x2"),
    observe=_rev_no_grad(lambda fn, args, kwargs: fn(*args.values(), **kwargs)),
    cases=[
        _rev_case("one token pair [1, 2], F and G two different small networks", (1, 2), seed=32),
        _rev_case("a batch [2, 5, 4]", (2, 5, 4), seed=33),
        _rev_case("wider halves [3, 8]", (3, 8), seed=34),
    ],
    hint="Undo the last update first: y2 = x2 + G(y1) and y1 is known, so x2 = y2 - G(y1). Then y1 = x1 + F(x2) "
    "with the x2 you just rebuilt: x1 = y1 - F(x2). Return (x1, x2).",
    mistakes=[
        (
            "x1 is rebuilt from y2: x1 = y1 − F(x2) needs x2, so rebuild x2 = y2 − G(y1) first; F(y2) is not F(x2)",
            lambda f, g, y1, y2: (y1 - f(y2), y2 - g(y1)),
        ),
        (
            "the halves are returned in the wrong order: return (x1, x2)",
            lambda f, g, y1, y2: RevBlock(f, g).inverse(y1, y2)[::-1],
        ),
        (
            "F and G are swapped: y1 = x1 + F(x2) and y2 = x2 + G(y1), so x2 = y2 − G(y1) and x1 = y1 − F(x2)",
            lambda f, g, y1, y2: RevBlock(g, f).inverse(y1, y2),
        ),
        (
            "the residuals are added: the inverse subtracts them, x2 = y2 − G(y1), x1 = y1 − F(x2)",
            lambda f, g, y1, y2: (y1 + f(y2 + g(y1)), y2 + g(y1)),
        ),
        (
            "G is applied to y2: x2 = y2 − G(y1), since G's input in the forward pass was y1",
            lambda f, g, y1, y2: (y1 - f(y2 - g(y2)), y2 - g(y2)),
        ),
    ],
)


# ---- 04: chunked_feed_forward -----------------------------------------------------------------------------
def _ff_observe(fn, args, kwargs):
    """The output, the gradients of a fixed loss with respect to x and ff's parameters, the peak bytes of the
    tensors alive while the forward pass runs (``memory.StoragePeak``) and the bytes it saved for backward
    (``memory.saved_activation_bytes``; parameters not counted)."""
    ff, x = args["ff"], args["x"].requires_grad_()
    result = {}

    def forward():
        result["output"] = fn(*args.values(), **kwargs)

    with StoragePeak(torch.device("cpu")) as tracker:
        saved = saved_activation_bytes(forward)
    out = result["output"]
    observed = {"output": out}
    if torch.is_tensor(out) and out.shape == x.shape:
        if out.requires_grad:
            weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
            grads = torch.autograd.grad((out * weights).sum(), (x, *ff.parameters()), allow_unused=True)
            observed["gradient of x"] = grads[0]
            observed["gradients of ff's parameters"] = list(grads[1:])
        else:
            observed["gradient of x"] = NO_GRADIENT
    observed["peak memory of the forward pass"] = tracker.peak
    observed["memory saved for backward by the forward pass"] = saved
    return observed


def _ff_expect(args, kwargs):
    """What the package computes, with the memory allowed: what it needed plus a few chunks' d_ff-wide tensors
    (an unchunked forward needs the whole [L, d_ff] at once)."""
    observed = _ff_observe(chunking.chunked_feed_forward, args, kwargs)
    ff, x, chunk_size = args["ff"], args["x"], args["chunk_size"]
    rows = min(chunk_size or x.shape[-2], x.shape[-2]) * math.prod(x.shape[:-2])
    chunk_bytes = rows * ff[0].out_features * x.element_size()  # one chunk's d_ff-wide tensor
    for key, what in [
        ("peak memory of the forward pass", "the output and one chunk's d_ff-wide intermediates at a time"),
        ("memory saved for backward by the forward pass", "x and one chunk's d_ff-wide intermediates"),
    ]:
        observed[key] = AtMost(observed[key] + 3 * chunk_bytes, what)  # GELU's input, W2's input, and slack
    return observed


def _ff_case(prop, shape, chunk_size, *, d_ff=16, seed):
    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ff = nn.Sequential(nn.Linear(shape[-1], d_ff), nn.GELU(), nn.Linear(d_ff, shape[-1])).double()
        return {"ff": ff, "x": _randn(*shape, seed=seed), "chunk_size": chunk_size}, {}

    return Case(prop, build)


def _ff_drop_last(ff, x, chunk_size):
    if chunk_size is None:
        return ff(x)
    full = x.shape[-2] - x.shape[-2] % chunk_size
    return torch.cat(
        [checkpoint(ff, x[..., i : i + chunk_size, :], use_reentrant=False) for i in range(0, full, chunk_size)], dim=-2
    )


def _ff_plain_loop(ff, x, chunk_size):
    if chunk_size is None:
        return ff(x)
    return torch.cat([ff(chunk) for chunk in x.split(chunk_size, dim=-2)], dim=-2)


def _ff_one_checkpoint(ff, x, chunk_size):
    return checkpoint(ff, x, use_reentrant=False)


def _ff_feature_chunks(ff, x, chunk_size):
    if chunk_size is None:
        return ff(x)
    return torch.cat([checkpoint(ff, part, use_reentrant=False) for part in x.split(chunk_size, dim=-1)], dim=-1)


_exercise(
    name="chunked_feed_forward",
    lesson="04",
    reference=chunking.chunked_feed_forward,
    observe=_ff_observe,
    expect=_ff_expect,
    cases=[
        _ff_case("L = 8 in chunks of 4", (8, 2), 4, seed=35),
        _ff_case("L = 7 in chunks of 3: the last chunk is shorter, and it counts", (7, 2), 3, seed=36),
        _ff_case("chunk_size=None: one call, unchunked", (5, 2), None, seed=37),
        _ff_case("chunk_size larger than L", (5, 2), 8, seed=38),
        _ff_case("leading dims [b, L, d]", (2, 9, 3), 4, seed=39),
        _ff_case("d_model = 6 wider than chunk_size = 2: chunks cut positions, never features", (6, 6), 2, seed=41),
        _ff_case(
            "memory: L = 256, d_ff = 256 in chunks of 32 — no [L, d_ff] intermediate, neither alive at once in the "
            "forward pass nor saved for backward",
            (256, 4),
            32,
            d_ff=256,
            seed=40,
        ),
    ],
    hint="x.split(chunk_size, dim=-2) cuts the sequence (the last chunk may be shorter); run ff on each chunk and "
    "torch.cat the results along dim -2. Under autograd wrap each call in torch.utils.checkpoint.checkpoint("
    "ff, chunk, use_reentrant=False), or every chunk's d_ff-wide intermediates stay saved for backward.",
    mistakes=[
        (
            "the last, shorter chunk is dropped: when chunk_size does not divide L, x.split(chunk_size, dim=-2) "
            "gives a shorter last chunk, and its positions need their output too",
            _ff_drop_last,
        ),
        (
            "a plain loop under autograd saves every chunk's d_ff-wide intermediates: together they are the whole "
            "[L, d_ff] again (lesson 04, section 4); checkpoint each chunk so that backward recomputes it",
            _ff_plain_loop,
        ),
        (
            "one checkpoint around the whole sequence saves little for backward, but its forward pass still "
            "builds the whole [L, d_ff] intermediate at once: cut x into chunks of positions and checkpoint each",
            _ff_one_checkpoint,
        ),
        (
            "the chunks cut the features, not the positions: the feed-forward is position-wise, so split the "
            "sequence dim (-2); a slice of the features is not a valid input of W1",
            _ff_feature_chunks,
        ),
    ],
)

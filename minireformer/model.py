"""The Reformer language model: every mechanism of the course in one ``nn.Module``.

    tokens [B, L] -> embedding + positions -> n_layers x (attention, feed-forward) -> LayerNorm -> logits [B, L, V]

With ``reversible=True`` the layers are reversible blocks (Reformer, section 3):

    y1 = x1 + Attention(x2),   y2 = x2 + FeedForward(y1)

on two copies of the embedded input, merged (averaged) at the end, and trained with the memory-free
backward of :class:`minireformer.reversible.ReversibleSequence`. With ``reversible=False`` it is a plain
pre-norm Transformer, ``x = x + Attention(x); x = x + FeedForward(x)``, which is what the paper compares
against. ``attention="full"`` swaps LSH attention for full attention with the same parameters, and
:meth:`ReformerLM.use_attention` swaps it after training (the paper evaluates LSH-trained models with
full attention and with other numbers of hash rounds). :meth:`ReformerLM.attention_weights` returns a
layer's dense ``[B, n_heads, L, L]`` attention weights, to see where a trained model looks.

The published Reformers (trax, HF transformers) are this model with a few more options; :mod:`minireformer.hf`
builds them on top of it (its layers come from :meth:`ReformerLM.make_attention` and
:meth:`ReformerLM.make_feed_forward`, which a subclass may override).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from .attention import FullSelfAttention, LSHSelfAttention
from .checks import check_bool, check_int
from .chunking import FeedForward
from .lsh import PAPER, Conventions, conventions_of
from .reversible import RevBlock, ReversibleSequence, duplicate, merge


@dataclass
class ReformerConfig:
    """The model's options: sizes, the attention (``"lsh"`` or ``"full"``) and its rounds, chunks, buckets and
    conventions (:class:`~minireformer.lsh.Conventions`, or a preset's name), reversible residuals, the
    feed-forward's chunks, positions (learned, or axial with ``axial_shape``) and how the two reversible streams
    become one (``merge``: ``"mean"``, or ``"concat"`` as trax and HF)."""

    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    n_layers: int = 2
    max_len: int = 1024
    attention: str = "lsh"  # "lsh" or "full"
    n_rounds: int = 4
    chunk_len: int = 64
    n_buckets: int | None = None  # None: the paper's 2 L / chunk_len
    reversible: bool = True
    ff_chunk_size: int | None = None  # None: the feed-forward runs on the whole sequence at once
    causal: bool = True
    dropout: float = 0.0
    shared_qk: bool = True  # full attention only: False uses separate Q and K (LSH needs Q = K)
    axial_shape: tuple | None = None  # (rows, cols) with rows * cols >= max_len: axial positions
    merge: str = "mean"  # how the two reversible streams become one: "mean" or "concat"
    conventions: Conventions | str = PAPER  # LSH attention's: the paper's, or "trax", "hf", "reformer-pytorch"

    def __post_init__(self):
        if self.attention not in ("lsh", "full"):
            raise ValueError(f"attention must be 'lsh' or 'full', got {self.attention!r}")
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "max_len", "n_rounds", "chunk_len"):
            check_int(name, getattr(self, name))
        for name in ("reversible", "causal", "shared_qk"):
            check_bool(name, getattr(self, name))
        if "lsh" in self.kinds() and not self.shared_qk:
            raise ValueError("LSH attention needs shared_qk=True: queries and keys must hash alike")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.axial_shape is not None:
            self.axial_shape = tuple(self.axial_shape)
            if len(self.axial_shape) != 2 or self.axial_shape[0] * self.axial_shape[1] < self.max_len:
                raise ValueError(
                    f"axial_shape must be (rows, cols) with rows * cols >= max_len={self.max_len}, "
                    f"got {self.axial_shape}"
                )
        if self.merge not in ("mean", "concat"):
            raise ValueError(f"merge must be 'mean' or 'concat', got {self.merge!r}")
        self.conventions = conventions_of(self.conventions)

    def kinds(self):
        """Each layer's attention kind."""
        return (self.attention,) * self.n_layers


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))``: the residual branch of a pre-norm Transformer layer."""

    def __init__(self, d_model, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(d_model), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class Block(nn.ModuleList):
    """One pre-norm Transformer layer with ordinary residuals, ``x = x + attention(x); x = x + feed_forward(x)``
    (a pair of modules, so its parameters are named ``0.*`` and ``1.*``)."""

    def forward(self, x):
        attention, feed_forward = self
        x = x + attention(x)
        return x + feed_forward(x)


class AxialPositions(nn.Module):
    """Axial position embeddings (trax, HF): position p = (row, col) gets ``[row_emb[row]; col_emb[col]]``,
    so ``rows * cols`` positions cost ``(rows + cols)`` vectors instead of ``rows * cols``. Row-major, as HF's:
    ``row = p // cols``, ``col = p % cols``; ``dims`` the two vectors' widths (None: half and half)."""

    def __init__(self, shape, d_model, dims=None):
        super().__init__()
        rows, cols = shape
        d_rows = d_model // 2 if dims is None else dims[0]
        self.rows = nn.Parameter(torch.randn(rows, d_rows) * 0.02)
        self.cols = nn.Parameter(torch.randn(cols, d_model - d_rows) * 0.02)

    def forward(self, length):
        position = torch.arange(length, device=self.rows.device)
        cols = self.cols.shape[0]
        return torch.cat([self.rows[position // cols], self.cols[position % cols]], dim=-1)  # [L, d_model]


class LearnedPositions(nn.Module):
    def __init__(self, max_len, d_model):
        super().__init__()
        self.table = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, length):
        return self.table[:length]  # [L, d_model]


class ReformerLM(nn.Module):
    """A causal (or bidirectional) language model; ``ReformerLM(vocab_size=..., **options)``, options as in
    :class:`ReformerConfig`. ``forward(tokens [B, L]) -> logits [B, L, vocab_size]``."""

    def __init__(self, vocab_size=None, *, config=None, **options):
        super().__init__()
        self.config = config if config is not None else ReformerConfig(vocab_size=vocab_size, **options)
        c = self.config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        # Token vectors start as small as the position vectors (GPT-2, nanoGPT: std 0.02). With PyTorch's
        # default N(0, 1) the positions would be 50 times smaller and, after LayerNorm, nearly invisible;
        # the duplication task, which is solved by position alone, then sits at chance for hundreds of steps.
        nn.init.normal_(self.embed.weight, std=0.02)
        self.positions = (
            AxialPositions(c.axial_shape, c.d_model) if c.axial_shape else LearnedPositions(c.max_len, c.d_model)
        )
        self.dropout = nn.Dropout(c.dropout)
        ff_chunk_size = None if c.reversible else c.ff_chunk_size  # a reversible block chunks its G itself
        layers = [
            (PreNorm(c.d_model, self.make_attention(kind)), PreNorm(c.d_model, self.make_feed_forward(ff_chunk_size)))
            for kind in c.kinds()
        ]
        if c.reversible:
            self.layers = ReversibleSequence([RevBlock(f, g, g_chunk_size=c.ff_chunk_size) for f, g in layers])
        else:
            self.layers = nn.ModuleList([Block(pair) for pair in layers])
        width = 2 * c.d_model if c.reversible and c.merge == "concat" else c.d_model
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, c.vocab_size)

    def make_attention(self, kind, n_rounds=None, attention_fn=None):
        """A layer's attention: ``"lsh"`` (with ``n_rounds``, or the config's; ``attention_fn``: see
        :class:`~minireformer.attention.LSHSelfAttention`) or ``"full"``."""
        c = self.config
        if kind == "lsh":
            return LSHSelfAttention(
                c.d_model,
                c.n_heads,
                n_rounds=n_rounds or c.n_rounds,
                chunk_len=c.chunk_len,
                n_buckets=c.n_buckets,
                causal=c.causal,
                dropout=c.dropout,
                conventions=c.conventions,
                attention_fn=attention_fn,
            )
        return FullSelfAttention(c.d_model, c.n_heads, causal=c.causal, dropout=c.dropout, shared_qk=c.shared_qk)

    def make_feed_forward(self, chunk_size):
        """A layer's feed-forward: ``d_ff`` wide, in chunks of ``chunk_size`` positions."""
        c = self.config
        return FeedForward(c.d_model, c.d_ff, dropout=c.dropout, chunk_size=chunk_size)

    def attention_layers(self):
        """The ``PreNorm`` wrapper of every layer's attention, in order."""
        if self.config.reversible:
            return [block.f for block in self.layers.blocks]
        return [pair[0] for pair in self.layers]

    def use_attention(self, kind, n_rounds=None, *, attention_fn=None):
        """Swap every layer's attention for ``kind`` ("lsh" or "full"), keeping its parameters (the same
        tensors, so an optimizer keeps working; layers of other kinds stay as they are); ``n_rounds`` sets the
        hash rounds of LSH attention, and ``attention_fn`` a function to compute it with instead of the package's
        (see :class:`~minireformer.attention.LSHSelfAttention`; lesson 02 trains with the learner's own)."""
        if kind not in ("lsh", "full"):
            raise ValueError(f"kind must be 'lsh' or 'full', got {kind!r}")
        if kind == "full" and n_rounds is not None:
            raise ValueError("n_rounds only applies to LSH attention")
        if kind == "full" and attention_fn is not None:
            raise ValueError("attention_fn only applies to LSH attention")
        if attention_fn is not None and not callable(attention_fn):
            raise TypeError(f"attention_fn must be a function, got {type(attention_fn).__name__}")
        if kind == "lsh" and not self.config.shared_qk:
            raise ValueError(
                "this model has separate Q and K projections (shared_qk=False); LSH attention needs "
                "one shared QK projection, so it cannot be swapped in"
            )
        for wrapper in self.attention_layers():
            if not isinstance(wrapper.fn, (LSHSelfAttention, FullSelfAttention)):
                continue
            old, new = wrapper.fn, self.make_attention(kind, n_rounds, attention_fn)
            for name in ("to_qk", "to_q", "to_k", "to_v", "to_out"):
                if hasattr(old, name):
                    setattr(new, name, getattr(old, name))
            new.train(old.training)
            wrapper.fn = new
        return self

    def check_token_ids(self, tokens):
        """Every id in ``[0, vocab_size)``, else a ``ValueError`` that says so (the embedding's own error is a
        bare ``IndexError`` on the CPU and a device-side assert on CUDA). Skipped while ``torch.compile`` traces."""
        if tokens.numel() == 0 or tokens.device.type == "meta" or torch.compiler.is_compiling():
            return
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(
                f"tokens must be ids in [0, vocab_size) = [0, {self.config.vocab_size}), got ids from {low} to {high}"
            )

    def forward(self, tokens):
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor [B, L], got {tokens.dtype} {tuple(tokens.shape)}")
        self.check_token_ids(tokens)
        length = tokens.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={self.config.max_len}")
        x = self.dropout(self.embed(tokens) + self.positions(length))  # [B, L, d_model]
        return self.head(self.norm(self.layer_stack(x)))  # [B, L, vocab_size]

    def layer_stack(self, x):
        """The layers between the embedding and the final norm: ``x [B, L, d_model]`` -> ``[B, L, d_model]``
        (``[B, L, 2 d_model]`` with ``merge="concat"``): reversible blocks on ``(x, x)``, merged, or the blocks
        one after another."""
        if self.config.reversible:
            return merge(*self.layers(*duplicate(x)), mode=self.config.merge)
        for block in self.layers:
            x = block(x)
        return x

    @torch.no_grad()
    def attention_weights(self, tokens, layer=0):
        """Where every query of one layer attends: ``tokens [B, L]`` -> weights ``[B, n_heads, L, L]``, each row
        summing to 1 (for LSH: every round's weights times its combination weight, summed).

        Runs the layers below ``layer`` forward (no dropout), then the attention of ``layer`` on its input.
        LSH attention draws its rotations from torch's global RNG exactly as a forward pass in the same RNG
        state would: seed it (or set the layer's ``generator``/``rotations``) for a picture that matches a
        forward pass. Builds ``L x L`` tensors: for pictures and tests at small L.
        """
        n_layers = self.config.n_layers
        if check_int("layer", layer, least=0) >= n_layers:
            raise ValueError(f"layer must be an integer in [0, {n_layers}), got {layer!r}")
        was_training = self.training
        self.eval()
        try:
            return self._attention_weights(tokens, layer)
        finally:
            self.train(was_training)

    def _attention_weights(self, tokens, layer):
        x = self.embed(tokens) + self.positions(tokens.shape[1])  # [B, L, d_model]
        if self.config.reversible:
            x1, x2 = duplicate(x)
            for block in self.layers.blocks[:layer]:
                x1, x2 = block(x1, x2)
            x = x2  # a reversible block's attention reads the second stream: y1 = x1 + Attention(x2)
        else:
            for block in self.layers[:layer]:
                x = block(x)
        wrapper = self.attention_layers()[layer]
        return wrapper.fn.weights(wrapper.norm(x))


# ---- sampling (lesson 07) ---------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model, prompt_tokens, n_new, *, temperature=1.0, top_k=None, generator=None):
    """Sample ``n_new`` tokens after ``prompt_tokens``, one at a time, from a causal :class:`ReformerLM`:

        x_{t+1} ~ softmax(logits(x_1..x_t)[t] / temperature), restricted to the top_k most likely tokens

    The model runs again on the whole growing sequence for every new token (LSH attention keeps no cache;
    its buckets change as the sequence grows); once it is longer than ``max_len``, on its last ``max_len``
    tokens. ``prompt_tokens``: ``[L]`` or ``[B, L]`` integers, ``1 <= L <= max_len``; returns the prompt
    with the new tokens appended, ``[L + n_new]`` or ``[B, L + n_new]``, on the model's device.
    ``temperature`` > 0 (small: nearly greedy); ``top_k=1`` is greedy decoding. With a ``generator`` the
    result is reproducible: it draws the samples and seeds the model's own randomness (LSH rotations) in a
    fork of the RNG, so the global RNG is left as it was. The model runs in eval mode (no dropout).
    """
    config = model.config
    if (
        not isinstance(prompt_tokens, torch.Tensor)
        or prompt_tokens.dtype not in (torch.int64, torch.int32)
        or prompt_tokens.dim() not in (1, 2)
        or prompt_tokens.shape[-1] < 1
    ):
        raise ValueError(
            "prompt_tokens must be a non-empty integer tensor [L] or [B, L], got "
            f"{getattr(prompt_tokens, 'dtype', type(prompt_tokens).__name__)} "
            f"{tuple(getattr(prompt_tokens, 'shape', ()))}"
        )
    if prompt_tokens.shape[-1] > config.max_len:
        raise ValueError(f"the prompt has {prompt_tokens.shape[-1]} tokens, more than max_len={config.max_len}")
    if prompt_tokens.numel() and (prompt_tokens.min() < 0 or prompt_tokens.max() >= config.vocab_size):
        raise ValueError(f"prompt_tokens must lie in 0..{config.vocab_size - 1}")
    check_int("n_new", n_new, least=0)
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r} (top_k=1 is greedy)")
    if top_k is not None:
        check_int("top_k", top_k)
    if not config.causal:
        raise ValueError("generate needs a causal model (causal=True): a bidirectional one sees the future in training")
    device = next(model.parameters()).device
    tokens = prompt_tokens.long().to(device)
    single = tokens.dim() == 1
    tokens = tokens[None] if single else tokens  # [B, L]
    was_training = model.training
    model.eval()
    fork, seed = torch.random.fork_rng(devices=[device] if device.type != "cpu" else [], device_type=device.type), None
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    try:
        with fork:
            if seed is not None:  # the LSH rotations come from the device's RNG: make them reproducible too
                torch.default_generator.manual_seed(seed)
                if device.type != "cpu":
                    torch.get_device_module(device.type).manual_seed(seed)
            for _ in range(n_new):
                logits = model(tokens[:, -config.max_len :])[:, -1].float() / temperature  # [B, vocab]
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = logits.softmax(dim=-1)
                where = generator.device if generator is not None else probs.device
                new = torch.multinomial(probs.to(where), 1, generator=generator).to(device)  # [B, 1]
                tokens = torch.cat([tokens, new], dim=1)
    finally:
        model.train(was_training)
    return tokens[0] if single else tokens

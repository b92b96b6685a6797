"""HF transformers' Reformer as the course's model: the same model as the one people download
(``google/reformer-crime-and-punishment``, ``google/reformer-enwik8``), with its weights and conventions.

    model = from_huggingface(ReformerModelWithLMHead.from_pretrained("google/reformer-crime-and-punishment"))
    logits = model(tokens)  # [B, L, vocab_size]: HF's logits (tests/hf, appendix C)

They agree to float64 rounding (5e-12 at most) in every configuration tested, and in float32 to 2e-6 except where
HF's own float32 is inexact (causal, several hash rounds; ours is the closer to float64 there):
``python -m minireformer hf`` prints the table (:func:`agreement_table`). What HF's model does differently from the
paper's is in :mod:`minireformer.hf.model`; here its config and weights are read into
:class:`~minireformer.hf.model.PublishedConfig` and :class:`~minireformer.hf.model.PublishedReformerLM`.
The two reversible halves are concatenated, ``[y1; y2]``, and normalized over ``2 d_model`` before the LM head
(``merge="concat"``).

Not converted (a ValueError names the option): ``num_buckets=None``, LSH windows that look ahead, windows wider
than two chunks (where a sequence has fewer chunks than they span, HF attends some keys twice), activations other
than ReLU and GELU. The converted model is returned in eval mode, where the two agree. In training they differ in
dropout: HF also drops attention probabilities and whole axial position rows, and draws its masks in other
places. transformers is optional (the ``compare`` extra): it is imported only inside the functions here.
"""

import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import socket
from pathlib import Path

import torch

from ..checks import check_int
from ..lsh import HF
from ..measuring.report import format_table
from ..measuring.timing import machine, resolve_device
from ..model import generate
from .model import ACTIVATIONS, LOCAL_CHUNK_LEN, PublishedConfig, PublishedLSHSelfAttention, PublishedReformerLM

INSTALL = "pip install -c constraints.txt -e '.[compare]'"


def hf_classes():
    """``(ReformerModelWithLMHead, ReformerForMaskedLM)``, or an ImportError that says how to install them."""
    try:
        from transformers import ReformerForMaskedLM, ReformerModelWithLMHead
    except ImportError as error:
        raise ImportError(f"from_huggingface needs HF transformers with its Reformer: {INSTALL}") from error
    return ReformerModelWithLMHead, ReformerForMaskedLM


def config_from_huggingface(hf_config):
    """Our :class:`~minireformer.hf.model.PublishedConfig` for an HF ``ReformerConfig`` (see the module docstring),
    or a ValueError naming the HF option we do not support."""
    c = hf_config
    kinds = tuple(getattr(c, "attn_layers", ()) or ())
    if not kinds or set(kinds) - {"lsh", "local"}:
        raise ValueError(f"config.attn_layers must list 'lsh' and 'local' layers only, got {list(kinds)}")
    n_buckets, factors = c.num_buckets, None
    if "lsh" in kinds:
        if n_buckets is None:
            raise ValueError(
                "config.num_buckets must be set (an even int or a list [n_1, n_2]): HF picks it in the "
                "first forward pass from that pass's length, which a converted model cannot know"
            )
        if c.lsh_num_chunks_after:
            raise ValueError(
                f"config.lsh_num_chunks_after must be 0 (our LSH windows only look back), got {c.lsh_num_chunks_after}"
            )
        if isinstance(n_buckets, (list, tuple)):
            n_buckets, factors = None, tuple(n_buckets)
    if c.hidden_act not in ACTIVATIONS:
        raise ValueError(f"config.hidden_act must be one of {sorted(ACTIVATIONS)}, got {c.hidden_act!r}")
    chunks = {
        kind: check_int(f"config.{kind}_attn_chunk_length", getattr(c, f"{kind}_attn_chunk_length"))
        for kind in set(kinds)
    }
    for kind in set(kinds):  # a wider window than 2 chunks: with fewer chunks than it spans HF takes keys twice
        before, after = getattr(c, f"{kind}_num_chunks_before"), getattr(c, f"{kind}_num_chunks_after")
        if (
            check_int(f"config.{kind}_num_chunks_before", before, least=0)
            + check_int(f"config.{kind}_num_chunks_after", after, least=0)
            > 1
        ):
            raise ValueError(
                f"config.{kind}_num_chunks_before + {kind}_num_chunks_after must be at most 1 (as in "
                f"both published models), got {before} + {after}: with fewer chunks than a wider window "
                f"spans, HF attends some keys twice and we attend each once, so the two would differ"
            )
    max_len, axial = c.max_position_embeddings, {}
    if c.axial_pos_embds:
        if len(c.axial_pos_shape) != 2 or len(c.axial_pos_embds_dim) != 2:
            raise ValueError(
                f"config.axial_pos_shape and axial_pos_embds_dim must have two entries each (rows, "
                f"columns), got {c.axial_pos_shape} and {c.axial_pos_embds_dim}"
            )
        axial = dict(axial_shape=tuple(c.axial_pos_shape), axial_dims=tuple(c.axial_pos_embds_dim))
        max_len = min(max_len, math.prod(c.axial_pos_shape))
    return PublishedConfig(
        vocab_size=c.vocab_size,
        d_model=c.hidden_size,
        n_heads=c.num_attention_heads,
        d_head=c.attention_head_size,
        d_ff=c.feed_forward_size,
        n_layers=len(kinds),
        max_len=max_len,
        layer_attention=kinds,
        n_rounds=c.num_hashes,
        chunk_len=chunks.get("lsh", 64),
        n_buckets=n_buckets,
        bucket_factors=factors,
        reversible=True,
        merge="concat",
        ff_chunk_size=c.chunk_size_feed_forward or None,
        causal=bool(c.is_decoder),
        dropout=c.hidden_dropout_prob,
        conventions=HF,
        lsh_look_back=c.lsh_num_chunks_before,
        hash_seed=c.hash_seed,
        local_options=dict(
            chunk_len=chunks.get("local", LOCAL_CHUNK_LEN),
            look_back=c.local_num_chunks_before,
            look_ahead=c.local_num_chunks_after,
        ),
        pad_multiple=math.lcm(*(chunks[kind] for kind in set(kinds))),
        out_bias=False,
        activation=c.hidden_act,
        norm_eps=c.layer_norm_eps,
        **axial,
    )


def weight_names(config):
    """``{our parameter name: HF's parameter name}`` for a model made by :func:`config_from_huggingface`."""
    hf_layer, names = "reformer.encoder.layers.{i}.", {"embed.weight": "reformer.embeddings.word_embeddings.weight"}
    if config.axial_shape:  # HF's [rows, 1, d_rows] and [1, cols, d_cols]: ours without the ones
        names.update(
            {
                "positions.rows": "reformer.embeddings.position_embeddings.weights.0",
                "positions.cols": "reformer.embeddings.position_embeddings.weights.1",
            }
        )
    else:
        names["positions.table"] = "reformer.embeddings.position_embeddings.embedding.weight"
    projections = {
        "lsh": {"to_qk": "query_key", "to_v": "value"},
        "local": {"to_q": "query", "to_k": "key", "to_v": "value"},
    }
    for i, kind in enumerate(config.kinds()):
        ours, hf = f"layers.blocks.{i}.", hf_layer.format(i=i)
        for part in ("weight", "bias"):
            names[f"{ours}f.norm.{part}"] = f"{hf}attention.layer_norm.{part}"
            names[f"{ours}g.norm.{part}"] = f"{hf}feed_forward.layer_norm.{part}"
            names[f"{ours}g.fn.net.0.{part}"] = f"{hf}feed_forward.dense.dense.{part}"  # dense -> act -> dense
            names[f"{ours}g.fn.net.3.{part}"] = f"{hf}feed_forward.output.dense.{part}"
        for mine, theirs in projections[kind].items():
            names[f"{ours}f.fn.{mine}.weight"] = f"{hf}attention.self_attention.{theirs}.weight"
        names[f"{ours}f.fn.to_out.weight"] = f"{hf}attention.output.dense.weight"
    for part in ("weight", "bias"):
        names[f"norm.{part}"] = f"reformer.encoder.layer_norm.{part}"  # over 2 d_model: [y1; y2]
        names[f"head.{part}"] = f"lm_head.decoder.{part}"
    return names


def load_weights(model, hf_state):
    """Copy HF's tensors (a state dict) into ``model``; each must have our shape up to dimensions of size 1 (HF's axial
    tables are ``[rows, 1, d]``); a ValueError names any missing or misshapen one."""
    names, ours = weight_names(model.config), model.state_dict()
    if set(names) != set(ours):
        raise ValueError(f"the weight map does not cover the model: {sorted(set(names) ^ set(ours))}")
    with torch.no_grad():
        for mine, theirs in names.items():
            if theirs not in hf_state or [n for n in hf_state[theirs].shape if n != 1] != [
                n for n in ours[mine].shape if n != 1
            ]:
                got = tuple(hf_state[theirs].shape) if theirs in hf_state else "nothing"
                raise ValueError(
                    f"HF's {theirs} must have shape {tuple(ours[mine].shape)} (up to sizes of 1) for our "
                    f"{mine}, got {got}"
                )
            ours[mine].copy_(hf_state[theirs].reshape(ours[mine].shape))
    return model


def from_huggingface(hf_model):
    """A :class:`~minireformer.hf.model.PublishedReformerLM` (a ``ReformerLM``) with the weights and conventions of
    ``hf_model``, an HF
    ``ReformerModelWithLMHead`` (causal) or ``ReformerForMaskedLM`` (bidirectional), on its device and in its
    dtype, in eval mode. Nothing is downloaded here: load the HF model first (``from_pretrained``)."""
    classes = hf_classes()
    if not isinstance(hf_model, classes):
        raise TypeError(
            f"hf_model must be a transformers ReformerModelWithLMHead or ReformerForMaskedLM, "
            f"got {type(hf_model).__name__}"
        )
    parameter = next(hf_model.parameters())
    model = PublishedReformerLM(config_from_huggingface(hf_model.config))
    load_weights(model, hf_model.state_dict())
    return model.to(device=parameter.device, dtype=parameter.dtype).eval()


# ---- the two published models, and small models shaped like them (tests/hf, appendix C) ----------------------------
# Their config.json on the Hub, as HF ReformerConfig keywords (hf/published/*.json: crime-and-punishment has 6 layers
# and a sentencepiece vocabulary of 320; enwik8 12 layers, three of them LSH, and bytes + 2), written from PaddleNLP's
# port of them (paddlenlp/transformers/reformer/configuration.py), since the machine this was written on cannot reach
# the Hub. Options not listed are HF's defaults, the same values. from_huggingface reads a downloaded model's own
# config.
PUBLISHED = {
    f"google/{path.stem.split('--')[1]}": json.loads(path.read_text())
    for path in sorted((Path(__file__).parent / "published").glob("*.json"))
}
# Shrunk so that a model runs in milliseconds, keeping what makes each one what it is: the layer pattern, the
# heads' width against d_model (2 x 8 = 16 of 32, as 2 x 64 = 128 of 256; 4 x 8 = 32, as 8 x 128 = 1024), the
# uneven axial widths (1:3), the chunk lengths' ratio, factorized or plain buckets, the number of hash rounds.
SMALL = {
    "google/reformer-crime-and-punishment": dict(
        hidden_size=32,
        attention_head_size=8,
        feed_forward_size=64,
        axial_pos_shape=[8, 16],
        axial_pos_embds_dim=[8, 24],
        max_position_embeddings=128,
        lsh_attn_chunk_length=8,
        local_attn_chunk_length=8,
        num_buckets=[4, 8],
    ),
    "google/reformer-enwik8": dict(
        hidden_size=32,
        num_attention_heads=4,
        attention_head_size=8,
        feed_forward_size=64,
        axial_pos_shape=[8, 32],
        axial_pos_embds_dim=[8, 24],
        max_position_embeddings=256,
        lsh_attn_chunk_length=16,
        local_attn_chunk_length=8,
        num_buckets=8,
    ),
}


def random_hf_model(name, *, small=True, causal=True, hash_seed=17, seed=0, **options):
    """An HF model shaped like the published ``name`` (``small``: shrunk, see ``SMALL``; ``options``: more HF config
    keywords), in eval mode, with random weights at a scale where attention is far from uniform: matrices
    N(0, 1 / fan_in), so that scores are a few units; embeddings N(0, 1); norms 1 + N(0, 0.3^2); biases N(0, 0.3^2).
    HF's own initialization (N(0, 0.02^2)) would make every attention nearly uniform and hide a wrong mask."""
    model_class, masked_class = hf_classes()
    from transformers import ReformerConfig as HFConfig

    keywords = {**PUBLISHED[name], **(SMALL[name] if small else {}), **options}
    torch.manual_seed(seed)  # HF draws its initial weights from the global RNG; they are all replaced below
    model = (model_class if causal else masked_class)(
        HFConfig(**dict(keywords, is_decoder=causal, hash_seed=hash_seed))
    ).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "embeddings" in key:
                p.copy_(noise)
            elif p.dim() >= 2:
                p.copy_(noise * p.shape[-1] ** -0.5)
            else:
                p.copy_(noise * 0.3 + (1.0 if key.endswith("layer_norm.weight") else 0.0))
    return model


def with_fixed_rotations(model, dtype):
    """A copy of a converted ``model`` in ``dtype`` whose LSH layers keep the rotations their ``hash_seed`` draws in
    float32: float64 then hashes exactly as float32 does, so it shows float32's rounding and nothing else."""
    model = copy.deepcopy(model)
    for wrapper in model.attention_layers():
        if isinstance(wrapper.fn, PublishedLSHSelfAttention):
            d_head = model.config.d_head or model.config.d_model // model.config.n_heads
            like = torch.zeros(1, wrapper.fn.n_heads, 1, d_head)  # only its shape, device and dtype count
            wrapper.fn.rotations = wrapper.fn.draw_rotations(like).to(dtype)
    return model.to(dtype)


@torch.no_grad()
def hf_greedy(hf_model, prompt, n_new):
    """HF's greedy tokens after ``prompt [L]``, the model run on the whole grown sequence for every new token (not
    its cached ``generate``, which with factorized buckets is not equal to its own full recomputation)."""
    x = prompt[None]
    for _ in range(n_new):
        x = torch.cat([x, hf_model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0]


@torch.no_grad()
def hf_cached_greedy(hf_model, prompt, n_new):
    """HF's own greedy ``generate`` after ``prompt [L]``, which caches buckets and hashes only each new token. (HF's
    Reformer prints a line for every input of ``generate`` it does not know, three per step; they are swallowed.)"""
    with contextlib.redirect_stdout(io.StringIO()):
        return hf_model.generate(prompt[None], max_new_tokens=n_new, do_sample=False, pad_token_id=0)[0]


def seed_hashing(hf_model, hash_seed=17):
    """Make ``hf_model`` draw the same rotations in every pass (``hash_seed``; the published models leave it unset),
    so that a model converted from it afterwards compares with it at any length. Returns ``hf_model``."""
    hf_model.config.hash_seed = check_int("hash_seed", hash_seed, least=0)
    for module in hf_model.modules():
        if hasattr(module, "hash_seed"):  # HF's LSH layers copy it from the config when they are built
            module.hash_seed = hash_seed
    return hf_model


@torch.no_grad()
def largest_gap(hf_model, ours, lengths, *, batch=2, seed=0):
    """The largest ``|logit difference|`` between ``hf_model`` and ``ours`` over random token batches of ``lengths``."""
    device, gaps = next(ours.parameters()).device, []
    for length in lengths:
        tokens = torch.randint(
            0, hf_model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed + length)
        ).to(device)
        gaps.append((hf_model(tokens).logits - ours(tokens)).abs().max().item())
    return max(gaps)


# (model, shrunk, causal): both published shapes, and crime-and-punishment at its real widths
AGREEMENT_CASES = [
    ("google/reformer-crime-and-punishment", True, True),
    ("google/reformer-crime-and-punishment", True, False),
    ("google/reformer-crime-and-punishment", False, True),
    ("google/reformer-enwik8", True, True),
    ("google/reformer-enwik8", True, False),
]


def agreement_table(device="cpu", cases=AGREEMENT_CASES):
    """Rows ``[model, size, mask, dtype, largest |logit difference|]``: random HF models (:func:`random_hf_model`)
    against their conversions, in float32 and float64, at lengths that are a multiple of the chunks (64), that HF
    pads (57) and shorter than a chunk (6); at full width one length, 100 (padded to 128)."""
    rows = []
    for name, small, causal in cases:
        for dtype in (torch.float32, torch.float64):
            hf_model = random_hf_model(name, small=small, causal=causal).to(device, dtype)
            gap = largest_gap(hf_model, from_huggingface(hf_model), (64, 57, 6) if small else (100,))
            rows.append(
                [
                    name.split("/")[1],
                    "small" if small else "full width",
                    "causal" if causal else "bidirectional",
                    str(dtype).removeprefix("torch."),
                    gap,
                ]
            )
    return rows


def add_arguments(parser):
    parser.add_argument(
        "--published",
        metavar="NAME",
        help="also compare on Google's trained weights: a Hub id "
        "(google/reformer-crime-and-punishment, google/reformer-enwik8) or a save_pretrained folder",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 1000], help="with --published: sequence lengths")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, ...")
    return parser


def from_args(args, parser):
    """``python -m minireformer hf``: the table of :func:`agreement_table`, then (``--published``) the same
    comparison on the trained weights, hashing seeded on both sides (:func:`seed_hashing`)."""
    import transformers

    transformers.logging.set_verbosity_error()  # HF reports each padding; the table pads on purpose
    device = resolve_device(args.device)
    header = ["model", "size", "mask", "dtype", "largest |logit difference|"]
    rows = agreement_table(device)
    if args.published:
        hf_model = published(args.published)
        if hf_model is None:
            parser.error(HOW_TO_RUN)
        for dtype in (torch.float32, torch.float64):
            trained = seed_hashing(copy.deepcopy(hf_model)).to(device, dtype)
            gap = largest_gap(trained, from_huggingface(trained), args.lengths, batch=1)
            rows.append([args.published.split("/")[-1], "trained", "causal", str(dtype).removeprefix("torch."), gap])
    print(
        f"HF transformers' Reformer against ReformerLM converted from it (random weights unless 'trained'), {machine()}"
    )
    print(format_table(header, [row[:-1] + [f"{row[-1]:.1e}"] for row in rows], align="<<<<>"))


def changed_options(config):
    """``[(option, the course's default, this model's value)]`` for each option of our ``config`` that differs from
    its default, the course's model (the options a converted model sets)."""
    defaults = PublishedConfig(vocab_size=config.vocab_size)
    return [
        (f.name, getattr(defaults, f.name), getattr(config, f.name))
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(defaults, f.name)
    ]


# ---- Google's trained weights: from a local copy, or downloaded where the Hub answers --------------------------
HOW_TO_RUN = (
    "Google's trained model is neither in HF's cache here nor downloadable (no connection to "
    "huggingface.co). On a machine with internet access this cell downloads it (10.5 MiB of weights); "
    "or copy a folder saved with model.save_pretrained(folder) here and pass its path instead of the "
    "model's name."
)


def hub_reachable(host="huggingface.co", timeout=3.0):
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds (HF's own client retries for 30 s)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def published(name="google/reformer-crime-and-punishment"):
    """The HF model ``name`` (a Hub id, or a folder written by ``save_pretrained``) in eval mode: from the folder,
    from HF's local cache, or downloaded when :func:`hub_reachable`; None when none of these can be had."""
    model_class, masked_class = hf_classes()
    if Path(name).is_dir():
        return model_class.from_pretrained(name).eval()
    try:
        return model_class.from_pretrained(name, local_files_only=True).eval()
    except OSError:
        if not hub_reachable():
            return None
    return model_class.from_pretrained(name).eval()


def _tokenizer(name):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        return AutoTokenizer.from_pretrained(name)


def sample_published(
    name="google/reformer-crime-and-punishment", prompt="A few months later", n_new=100, *, temperature=0.7, seed=0
):
    """Text that Google's trained model ``name`` writes after ``prompt``, sampled through the course's own
    :func:`~minireformer.model.generate` on the converted model: a dict with the
    ``text``, the ``tokens`` and ``prompt_gap``, the largest logit difference from HF's model on the prompt (shorter
    than a chunk, so no hashing and no seed is involved); None where the weights cannot be had (:func:`published`)."""
    hf_model = published(name)
    if hf_model is None:
        return None
    tokenizer = _tokenizer(name)
    ours = from_huggingface(hf_model)
    ids = torch.tensor(tokenizer.encode(prompt), device=next(ours.parameters()).device)
    with torch.no_grad():
        prompt_gap = (hf_model(ids[None]).logits - ours(ids[None])).abs().max().item()
    torch.manual_seed(seed)  # hash_seed is None in the published config: LSH layers draw from the global RNG
    tokens = generate(ours, ids, n_new, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    return dict(text=tokenizer.decode(tokens.tolist()), tokens=tokens, prompt_gap=prompt_gap)

"""Pictures of attention: matplotlib heatmaps and bertviz's interactive views, offline.

Lessons 03 (attention) and 06 (sampling: the trained model's attention) use this.

``plot_attention`` draws one heatmap per head: row i is query token i, column j key token j,
the colour is how much i attends to j. ``head_view`` and ``model_view`` are bertviz's views
(Vig, 2019) of the course's own model: lines from each token to the tokens it attends to, for
one layer (head view) or for every layer and head at once (model view).

    >>> import torch
    >>> from course_lib.attention import MultiHeadAttention
    >>> from course_lib.viz import head_view, model_view, plot_attention
    >>> tokens = "To be , or not to be".split()
    >>> x = torch.randn(1, len(tokens), 32)                     # (B, T, C)
    >>> _, att = MultiHeadAttention(32, n_head=4)(x, need_weights=True)
    >>> att.shape                                               # (B, n_head, T, T)
    torch.Size([1, 4, 7, 7])
    >>> fig = plot_attention(att[0], tokens)                    # (n_head, T, T): 4 heatmaps
    >>> len([ax for ax in fig.axes if ax.images])
    4
    >>> view = head_view([att, att], tokens)                    # one (1, n_head, T, T) per layer
    >>> type(view).__name__                                     # a notebook cell shows it
    'HTML'

bertviz's own views load their JavaScript from the internet, so they stay empty offline and in
JupyterLab; course_lib.bertviz_offline rewrites each into a self-contained ``<iframe>`` (its
docstring says how, when the iframe runs, and why it raises rather than shows an empty view if
bertviz changes).

Views go into the stored notebook, and nbval compares them, so they are deterministic and kept
small: the weights are rounded to ``decimals`` (2 by default) and a view holds at most
``MAX_TOKENS`` tokens and ``MAX_WEIGHTS`` weights. A view weighs about 360 KB (d3 and jQuery, in
every view's iframe) plus about 6 bytes a weight: 405 KB for 2 layers x 4 heads x 32 tokens. So a
lesson shows a few views, not dozens (a notebook stays under 2 MB).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import bertviz
import torch
from IPython.display import HTML
from matplotlib.figure import Figure
from torch import Tensor

from course_lib.bertviz_offline import BERTVIZ_VERSION as BERTVIZ_VERSION  # the pin, re-exported
from course_lib.bertviz_offline import offline_view
from course_lib.errors import CourseError

MAX_TOKENS = 64  # beyond this the lines of a view are a grey blur, and the output is large
MAX_WEIGHTS = 65_536  # n_layers * n_head * T * T in one view: about 400 KB of JSON at most


# ---------------------------------------------------------------------------------------------
# matplotlib: one heatmap per head


def plot_attention(
    weights: Tensor,
    tokens: Sequence[str],
    *,
    title: str | None = None,
    ncols: int | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
) -> Figure:
    """Heatmaps of attention weights, one per head, tokens on both axes; returns the Figure.

    weights: (n_head, T, T), or (T, T) for a single head, or (1, n_head, T, T) as returned by
    ``MultiHeadAttention(..., need_weights=True)``; ``weights[h, i, j]`` is how much query token
    i attends to key token j in head h. tokens: the T tokens, as strings.
    All heads share one colour scale, from 0 to ``vmax`` (default: the largest weight), so they
    can be compared. Every token gets its label, also at 30+ tokens: each heatmap grows with T,
    and fewer go in a row (``ncols``, default: as many as fit in about 16 inches, at most 4).
    The figure is not registered with pyplot: a notebook shows the returned figure once;
    a script saves it with ``fig.savefig("attention.png")``.
    """
    w = torch.as_tensor(weights).detach().to("cpu", torch.float32)
    single_head = w.dim() == 2
    if w.dim() == 4 and w.size(0) == 1:
        w = w[0]  # (1, n_head, T, T) -> (n_head, T, T): the batch of one sequence
    elif single_head:
        w = w[None]  # (T, T) -> (1, T, T)
    if w.dim() != 3 or w.size(1) != w.size(2):
        raise CourseError(
            f"weights of shape {tuple(w.shape)}: expected (n_head, T, T) or (T, T) (square: "
            f"every query against every key). For a batch (B, n_head, T, T) pick one sequence: "
            f"weights[0]"
        )
    n_head, T, _ = w.shape
    labels = _labels(tokens, T)
    if not torch.isfinite(w).all():
        raise CourseError("weights contain NaN or inf: check the mask (a row with no allowed key)")

    size = max(2.5, 0.17 * T)  # inches a heatmap: 0.17 in a token keeps 7 pt labels apart
    if ncols is None:
        # About 16 inches across: wider, and a notebook shrinks the picture and its labels.
        ncols = min(4, int(16 // size))
    ncols = max(1, min(ncols, n_head))
    nrows = math.ceil(n_head / ncols)
    fontsize = 9 if T <= 16 else 7 if T <= 48 else 5
    fig = Figure(figsize=(ncols * size + 1.2, nrows * (size + 0.6)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    vmax = float(w.max()) if vmax is None else vmax
    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.remove()  # the empty slots of the last row
            continue
        image = ax.imshow(w[h].numpy(), cmap=cmap, vmin=0.0, vmax=vmax)
        ax.set_xticks(range(T), labels=labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(T), labels=labels, fontsize=fontsize)
        if not single_head:
            ax.set_title(f"head {h}")
        if h % ncols == 0:
            ax.set_ylabel("query (attending)")
        if h >= n_head - ncols:
            ax.set_xlabel("key (attended to)")
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def _labels(tokens: Sequence[str], T: int) -> list[str]:
    """Tick labels: whitespace made visible, and '$' escaped (matplotlib reads $...$ as math)."""
    _check_tokens(tokens, T)
    return [_visible(t).replace("$", r"\$") for t in tokens]


def _visible(token: str) -> str:
    """A newline or tab token would be an empty label: show it as \\n or \\t."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _check_tokens(tokens: Sequence[str], T: int) -> None:
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise CourseError(
            f"tokens must be a list of strings, one per position, got {tokens!r:.80}: for ids use "
            f"[tokenizer.decode([i]) for i in ids]"
        )
    if len(tokens) != T:
        raise CourseError(
            f"{len(tokens)} tokens for attention over T={T} positions: pass exactly one token "
            f"for each position"
        )


# ---------------------------------------------------------------------------------------------
# bertviz: head view and model view, offline
#
# They take the attention itself, as bertviz does (Lesson 03 shows hand-made heads), or the
# course's GPT with its tokenizer and a text: head_view(model, tokenizer, text).


@torch.no_grad()
def model_attention(model: torch.nn.Module, tokenizer, text: str) -> tuple[list[Tensor], list[str]]:
    """The attention of a course GPT on ``text``: (one (1, n_head, T, T) per layer, T tokens)."""
    ids = tokenizer.encode(text)
    if not ids:
        raise CourseError("text is empty: give at least one token to look at")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout in the weights we show
    out = model(torch.tensor([ids], device=device), need_weights=True)
    model.train(was_training)
    return [a.cpu() for a in out.attentions], [tokenizer.decode([i]) for i in ids]


def head_view(
    attention: Sequence[Tensor] | torch.nn.Module,
    tokens: Sequence[str],
    text: str | None = None,
    *,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    include_layers: Sequence[int] | None = None,
    decimals: int = 2,
) -> HTML:
    """bertviz's head view, working offline; returns an ``IPython.display.HTML`` for a cell.

    attention: a list with one tensor per layer, each (1, n_head, T, T) (what
    ``MultiHeadAttention(..., need_weights=True)`` returns for one sequence) or (n_head, T, T).
    tokens: the T tokens, as strings (a newline is shown as \\n). layer: the layer shown first
    (default: the first one); heads: the heads selected first (default: all); include_layers:
    the layers to put in the view (default: all). Weights are rounded to ``decimals`` to keep
    the notebook small.
    Hover over a token to see what it attends to; click a colour to toggle a head.
    Or ``head_view(model, tokenizer, text)``: the attention of a course GPT on ``text``.
    """
    if isinstance(attention, torch.nn.Module):
        attention, tokens = model_attention(attention, tokens, text)
    layers = _layers(attention, tokens, decimals)
    include_layers = _indices(include_layers, len(layers), "include_layers", "layer")
    if layer is not None and layer not in include_layers:
        raise CourseError(f"layer={layer} is not among include_layers={include_layers}")
    if heads is not None:
        heads = _indices(heads, layers[0].size(1), "heads", "head")
    _check_size(layers[0].size(1) * len(include_layers), len(tokens))
    view = bertviz.head_view(
        layers,
        [_visible(t) for t in tokens],
        layer=layer,
        heads=heads,
        include_layers=include_layers,
        html_action="return",
    )
    height = 22.5 * len(tokens) + 75  # bertviz's rows are 22.5 px, plus the layer menu
    return offline_view(view.data, "head view", height)


def model_view(
    attention: Sequence[Tensor] | torch.nn.Module,
    tokens: Sequence[str],
    text: str | None = None,
    *,
    include_layers: Sequence[int] | None = None,
    include_heads: Sequence[int] | None = None,
    display_mode: str = "light",
    decimals: int = 2,
) -> HTML:
    """bertviz's model view (every layer x head), offline; returns an ``IPython.display.HTML``.

    attention, tokens, decimals: as for ``head_view``. include_layers, include_heads: the layers
    and heads to show (default: all). display_mode: "light" (default, like JupyterLab's default
    theme) or "dark" (bertviz's default). Click a thumbnail to enlarge that head.
    Or ``model_view(model, tokenizer, text)``: the attention of a course GPT on ``text``.
    """
    if isinstance(attention, torch.nn.Module):
        attention, tokens = model_attention(attention, tokens, text)
    if display_mode not in ("light", "dark"):
        raise CourseError(f"display_mode={display_mode!r}: use 'light' or 'dark'")
    layers = _layers(attention, tokens, decimals)
    n_head = layers[0].size(1)
    include_layers = _indices(include_layers, len(layers), "include_layers", "layer")
    include_heads = _indices(include_heads, n_head, "include_heads", "head")
    _check_size(len(include_layers) * len(include_heads), len(tokens))
    view = bertviz.model_view(
        layers,
        [_visible(t) for t in tokens],
        display_mode=display_mode,
        include_layers=include_layers,
        include_heads=include_heads,
        html_action="return",
    )
    # bertviz's thumbnails: 7 * 12 / n_head px a token, 5 px padding, 38 px of axis labels;
    # or the enlarged head, 18 px a token plus its heading, whichever is taller.
    thumbnail = len(tokens) * 7 * 12 / n_head + 10
    height = max(len(include_layers) * thumbnail + 38, 18 * len(tokens) + 55) + 40
    return offline_view(view.data, "model view", height)


def _layers(attention: Sequence[Tensor], tokens: Sequence[str], decimals: int) -> list[Tensor]:
    """Check the attention of every layer; return them as (1, n_head, T, T) float64, rounded.

    float64: ``round(x, 2)`` in float32 gives 0.12999999523 once printed as JSON; in float64 the
    rounded value prints as 0.13, which keeps the embedded JSON short and exact.
    """
    if isinstance(attention, Tensor) or not isinstance(attention, Sequence) or not attention:
        raise CourseError(
            "attention must be a non-empty list with one tensor per layer, each (1, n_head, T, T) "
            "or (n_head, T, T), as bertviz takes it; for a single layer pass [att]"
        )
    if not 0 <= decimals <= 6:
        raise CourseError(f"decimals={decimals}: use 2 or 3 (0 to 6 allowed)")
    layers = []
    for i, a in enumerate(attention):
        a = torch.as_tensor(a).detach().to("cpu", torch.float64)
        if a.dim() == 3:
            a = a[None]  # (n_head, T, T) -> (1, n_head, T, T)
        if a.dim() != 4 or a.size(0) != 1 or a.size(2) != a.size(3):
            raise CourseError(
                f"attention[{i}] has shape {tuple(a.shape)}: expected (1, n_head, T, T) or "
                f"(n_head, T, T); for a batch (B, n_head, T, T) pick one sequence: att[0:1]"
            )
        if layers and a.shape != layers[0].shape:
            raise CourseError(
                f"attention[{i}] has shape {tuple(a.shape)} but attention[0] has "
                f"{tuple(layers[0].shape)}: every layer needs the same n_head and T"
            )
        if not torch.isfinite(a).all():
            raise CourseError(f"attention[{i}] contains NaN or inf: check the mask")
        layers.append(torch.round(a, decimals=decimals))
    T = layers[0].size(-1)
    _check_tokens(tokens, T)
    if T > MAX_TOKENS:
        raise CourseError(
            f"{T} tokens: a view holds at most MAX_TOKENS={MAX_TOKENS} (beyond that its lines "
            f"blur and the notebook grows). Show a shorter text, e.g. the first 32 tokens: "
            f"[a[..., :32, :32] for a in attention], tokens[:32]"
        )
    return layers


def _indices(chosen: Sequence[int] | None, n: int, name: str, what: str) -> list[int]:
    if chosen is None:
        return list(range(n))
    chosen = [int(i) for i in chosen]
    if not chosen or not all(0 <= i < n for i in chosen):
        raise CourseError(f"{name}={chosen}: each must be a {what} index in 0..{n - 1}")
    return chosen


def _check_size(n_maps: int, T: int) -> None:
    if n_maps * T * T > MAX_WEIGHTS:
        raise CourseError(
            f"{n_maps} attention maps of {T}x{T} tokens = {n_maps * T * T:,} weights, over "
            f"MAX_WEIGHTS={MAX_WEIGHTS:,} for one view (each weight is stored in the notebook): "
            f"pick fewer layers with include_layers=[...] or show fewer tokens"
        )

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

Why the views need more than ``bertviz.head_view``: bertviz 1.4.1 loads require.js, d3 and
jQuery from a public CDN each time a view is shown, so offline, behind a firewall, or in
JupyterLab (which has no require.js) the view stays empty. Here the view is rewritten to call
bertviz's drawing code directly, with d3 5.7.0 (shipped inside the ``mpld3`` wheel) and jQuery
(shipped inside the ``xstatic-jquery`` wheel) read from the installed packages and inlined, so
it needs no network. Each view lives in its own ``<iframe srcdoc=...>``: several views on one
page keep their own copies of the libraries and element ids, and nothing leaks into JupyterLab.
If an upgrade of bertviz changes the code this rewrite relies on, it raises a RuntimeError
rather than showing an empty view (bertviz is pinned to the version below).

Views go into the stored notebook, and nbval compares them, so they are deterministic (the same
inputs give the same bytes: no random ids, no timestamps) and kept small: the weights are
rounded to ``decimals`` (2 by default) and a view holds at most ``MAX_TOKENS`` tokens and
``MAX_WEIGHTS`` weights. A view weighs about 360 KB (d3 and jQuery, in every view's iframe)
plus about 6 bytes a weight: 405 KB for 2 layers x 4 heads x 32 tokens. So a lesson shows a
few views, not dozens (a notebook stays under 2 MB). The iframe runs only in a trusted output,
as every interactive output does: a notebook you ran yourself, or one marked with
``jupyter trust``, which ``python3 course.py`` does for the lessons.
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.util
import math
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import bertviz
import torch
from IPython.display import HTML
from matplotlib.figure import Figure
from torch import Tensor

BERTVIZ_VERSION = "1.4.1"  # the version whose HTML and JavaScript the rewrite below expects
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
        raise ValueError(
            f"weights of shape {tuple(w.shape)}: expected (n_head, T, T) or (T, T) (square: "
            f"every query against every key). For a batch (B, n_head, T, T) pick one sequence: "
            f"weights[0]"
        )
    n_head, T, _ = w.shape
    labels = _labels(tokens, T)
    if not torch.isfinite(w).all():
        raise ValueError("weights contain NaN or inf: check the mask (a row with no allowed key)")

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
        raise ValueError(
            f"tokens must be a list of strings, one per position, got {tokens!r:.80}: for ids use "
            f"[tokenizer.decode([i]) for i in ids]"
        )
    if len(tokens) != T:
        raise ValueError(
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
        raise ValueError("text is empty: give at least one token to look at")
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
        raise ValueError(f"layer={layer} is not among include_layers={include_layers}")
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
    return _offline(view.data, "head view", height)


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
        raise ValueError(f"display_mode={display_mode!r}: use 'light' or 'dark'")
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
    return _offline(view.data, "model view", height)


def _layers(attention: Sequence[Tensor], tokens: Sequence[str], decimals: int) -> list[Tensor]:
    """Check the attention of every layer; return them as (1, n_head, T, T) float64, rounded.

    float64: ``round(x, 2)`` in float32 gives 0.12999999523 once printed as JSON; in float64 the
    rounded value prints as 0.13, which keeps the embedded JSON short and exact.
    """
    if isinstance(attention, Tensor) or not isinstance(attention, Sequence) or not attention:
        raise ValueError(
            "attention must be a non-empty list with one tensor per layer, each (1, n_head, T, T) "
            "or (n_head, T, T), as bertviz takes it; for a single layer pass [att]"
        )
    if not 0 <= decimals <= 6:
        raise ValueError(f"decimals={decimals}: use 2 or 3 (0 to 6 allowed)")
    layers = []
    for i, a in enumerate(attention):
        a = torch.as_tensor(a).detach().to("cpu", torch.float64)
        if a.dim() == 3:
            a = a[None]  # (n_head, T, T) -> (1, n_head, T, T)
        if a.dim() != 4 or a.size(0) != 1 or a.size(2) != a.size(3):
            raise ValueError(
                f"attention[{i}] has shape {tuple(a.shape)}: expected (1, n_head, T, T) or "
                f"(n_head, T, T); for a batch (B, n_head, T, T) pick one sequence: att[0:1]"
            )
        if layers and a.shape != layers[0].shape:
            raise ValueError(
                f"attention[{i}] has shape {tuple(a.shape)} but attention[0] has "
                f"{tuple(layers[0].shape)}: every layer needs the same n_head and T"
            )
        if not torch.isfinite(a).all():
            raise ValueError(f"attention[{i}] contains NaN or inf: check the mask")
        layers.append(torch.round(a, decimals=decimals))
    T = layers[0].size(-1)
    _check_tokens(tokens, T)
    if T > MAX_TOKENS:
        raise ValueError(
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
        raise ValueError(f"{name}={chosen}: each must be a {what} index in 0..{n - 1}")
    return chosen


def _check_size(n_maps: int, T: int) -> None:
    if n_maps * T * T > MAX_WEIGHTS:
        raise ValueError(
            f"{n_maps} attention maps of {T}x{T} tokens = {n_maps * T * T:,} weights, over "
            f"MAX_WEIGHTS={MAX_WEIGHTS:,} for one view (each weight is stored in the notebook): "
            f"pick fewer layers with include_layers=[...] or show fewer tokens"
        )


# The rewrite. bertviz's HTML (html_action="return") is, in this order:
#   <script src=".../require.js"></script>             loads require.js from a CDN
#   <div id="bertviz-<32 hex>"> ... </div>              the view's container, a random id
#   <script type="text/javascript">
#   require.config({paths: {d3: 'https://...', jquery: 'https://...'}});
#   requirejs(['jquery', 'd3'], function ($, d3) { ...draws the view... });
#   </script>
# It becomes a self-contained page: no require.js, d3 and jQuery inlined, the drawing function
# called directly with them, and an id derived from the content instead of a random one.
_REQUIRE_TAG = (
    '<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js"></script>'
)
_SCRIPT_OPEN = '\n<script type="text/javascript">\n'
_SCRIPT_CLOSE = "\n</script>\n"
_RANDOM_ID = re.compile(r"bertviz-[0-9a-f]{32}")
_REQUIRE_CONFIG = re.compile(r"require\.config\(\{\s*paths:\s*\{[^{}]*\}\s*\}\);\s*")
_REQUIREJS_CALL = re.compile(r"requirejs\(\['jquery', 'd3'\], function ?\(\$, d3\) ?\{")
_PARAMS_START = "const params = "
_PARAMS_MIDDLE = "; // HACK: "
_PARAMS_END = " is a template marker that is replaced by actual params."
_ANY_LOADER = re.compile(r"\brequire(js)?\s*[.(]|<script src|cdnjs")

# Grow the iframe to fit the view, whose height depends on the tokens and layers. A srcdoc
# iframe has its page's origin, so it may reach its own <iframe> element (frameElement).
_FIT_HEIGHT = """(function () {
  const frame = window.frameElement;
  if (!frame) return;
  const fit = () => { frame.style.height = (document.body.scrollHeight + 24) + "px"; };
  new ResizeObserver(fit).observe(document.body);
  fit();
})();"""


def _offline(bertviz_html: str, kind: str, height: float) -> HTML:
    """Rewrite bertviz's HTML into an iframe that draws the view with no network."""
    body, script = _rewrite(bertviz_html, kind)
    d3, jquery, credits = _js_libraries()
    page = (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<!-- bertviz {BERTVIZ_VERSION} {kind}, offline by course_lib.viz: {credits} -->\n"
        "<style>body { margin: 0; background: white; }</style>\n"
        f"<script>{d3}</script>\n<script>{jquery}</script>\n</head>\n<body>\n"
        f"{body}\n<script>\n{script}\n</script>\n<script>\n{_FIT_HEIGHT}\n</script>\n"
        "</body>\n</html>\n"
    )
    # A <div> around the iframe: IPython warns about HTML that is a bare <iframe>.
    return HTML(
        f'<div class="course-lib-bertviz"><iframe title="bertviz {kind}" '
        f'style="width: 100%; height: {round(height)}px; border: 0;" '
        f'srcdoc="{html.escape(page, quote=True)}"></iframe></div>'
    )


def _rewrite(bertviz_html: str, kind: str) -> tuple[str, str]:
    """(the view's <div>, its script) from bertviz's HTML, the script calling d3 and jQuery
    directly; raises RuntimeError if the HTML is not laid out as bertviz 1.4.1 lays it out."""

    def changed(what: str) -> RuntimeError:
        return RuntimeError(
            f"bertviz {_installed_bertviz()} lays out its {kind} differently from bertviz "
            f"{BERTVIZ_VERSION}, which course_lib.viz rewrites to work offline: {what}. "
            f"Install the pinned version: pip install bertviz=={BERTVIZ_VERSION}"
        )

    if not bertviz_html.startswith(_REQUIRE_TAG):
        raise changed("it no longer starts with the require.js <script> tag")
    rest = bertviz_html[len(_REQUIRE_TAG) :]
    if rest.count(_SCRIPT_OPEN) != 1 or not rest.endswith(_SCRIPT_CLOSE):
        raise changed("it no longer ends with exactly one inline <script>")
    body, script = rest[: -len(_SCRIPT_CLOSE)].split(_SCRIPT_OPEN)

    # Take the data (the JSON, with the learner's tokens) out of bertviz's code first, so that
    # no token can fool the checks below. bertviz's template line `const params = PYTHON_PARAMS;
    # // HACK: PYTHON_PARAMS is a template marker ...` gets the JSON twice: keep one copy.
    lines = script.split("\n")
    at = [i for i, line in enumerate(lines) if line.lstrip().startswith(_PARAMS_START)]
    line = lines[at[0]].lstrip() if len(at) == 1 else ""
    n = (len(line) - len(_PARAMS_START) - len(_PARAMS_MIDDLE) - len(_PARAMS_END)) // 2
    params = line[len(_PARAMS_START) :][:n]
    if n <= 0 or line != _PARAMS_START + params + _PARAMS_MIDDLE + params + _PARAMS_END:
        raise changed(f"expected one line {_PARAMS_START}<JSON>{_PARAMS_MIDDLE}<JSON>{_PARAMS_END}")
    indent = lines[at[0]][: -len(line)]
    lines[at[0]] = f"{indent}{_PARAMS_START}PARAMS;"
    code = "\n".join(lines)

    ids = _RANDOM_ID.findall(body)
    if len(ids) != 1 or f'"root_div_id": "{ids[0]}"' not in params:
        raise changed(f"expected one random element id bertviz-<32 hex digits>, found {ids}")
    code, n_config = _REQUIRE_CONFIG.subn("", code)
    code, n_call = _REQUIREJS_CALL.subn("(function ($, d3) {", code)
    code = code.rstrip()
    if n_config != 1 or n_call != 1 or not code.endswith("});"):
        raise changed(
            f"its script no longer has one require.config({{paths: ...}}) (found {n_config}), "
            f"one requirejs(['jquery', 'd3'], function ($, d3) {{ (found {n_call}) and a "
            f"closing '}});'"
        )
    code = code[: -len("});")] + "})(window.jQuery, window.d3);"
    if _ANY_LOADER.search(body + code) or "</" in code or "<!--" in code:
        raise changed("its code still loads code from elsewhere, or holds '</' or '<!--'")

    # A token such as "</script>" would end the <script> early. In the JSON, "<" can only be
    # inside a string (a token), where \u003c is the same character to JavaScript.
    params = params.replace("<", "\\u003c")
    # The same inputs give the same bytes, for nbval: the random id becomes a hash of the view.
    random_id = ids[0]
    content = (kind + body + code + params).replace(random_id, "").encode()
    stable_id = "bertviz-" + hashlib.sha256(content).hexdigest()[:32]
    script = code.replace(f"{_PARAMS_START}PARAMS;", f"{_PARAMS_START}{params};", 1)
    return body.replace(random_id, stable_id), script.replace(random_id, stable_id)


def _installed_bertviz() -> str:
    try:
        return metadata.version("bertviz")
    except metadata.PackageNotFoundError:
        return "(version unknown)"


@functools.cache
def _js_libraries() -> tuple[str, str, str]:
    """(d3, jQuery, credits): the libraries' code, read from the installed wheels.

    bertviz's drawing code needs d3 v4 or v5 (v6 changed the arguments of event handlers) and
    any jQuery 2 or 3; the mpld3 wheel ships d3 5.7.0, the xstatic-jquery wheel jQuery 3.7.1
    (its slim build: bertviz uses no ajax or effects).
    """
    d3, d3_version = _read_library(
        _package_dir("mpld3") / "js" / "d3.v5.min.js",
        "d3",
        r"// https://d3js\.org v",
        ("4", "5"),
        "mpld3==0.5.12",
    )
    jquery, jquery_version = _read_library(
        _package_dir("xstatic.pkg.jquery") / "data" / "jquery.slim.min.js",
        "jQuery",
        r"/\*! jQuery v",
        ("2", "3"),
        "xstatic-jquery==3.7.1.1",
    )
    for name, code in (("d3", d3), ("jQuery", jquery)):
        if "</script" in code.lower():
            raise RuntimeError(f"{name} contains '</script' and cannot be inlined in a page")
    credits = f"d3 {d3_version} from the mpld3 wheel, jQuery {jquery_version} from xstatic-jquery"
    return d3, jquery, credits


def _read_library(
    path: Path, name: str, header: str, majors: tuple[str, ...], pin: str
) -> tuple[str, str]:
    """(code, version) of a JavaScript library shipped in a wheel, checked to be a version
    bertviz works with (its first line names it: ``header`` then major.minor.patch)."""
    if not path.is_file():
        raise RuntimeError(f"{path} is missing. Install the pinned version: pip install {pin}")
    code = path.read_text(encoding="utf-8")
    match = re.match(header + r"(\d+)\.(\d+)\.(\d+)", code)
    if not match or match[1] not in majors:
        wanted = " or ".join(f"v{m}" for m in majors)
        raise RuntimeError(
            f"{path} is not {name} {wanted} (its start: {code[:60]!r}), which bertviz "
            f"{BERTVIZ_VERSION} needs. Install the pinned version: pip install {pin}"
        )
    return code, ".".join(match.groups())


def _package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it (mpld3 imports a lot)."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a parent package (xstatic) is missing
        spec = None
    if spec is None or not spec.origin:
        raise RuntimeError(
            f"the package {name} is not installed; course_lib.viz reads d3 and jQuery from it "
            f"to show bertviz's views offline. Install the course's pinned packages: "
            f"pip install -e . (or pip install mpld3==0.5.12 xstatic-jquery==3.7.1.1)"
        )
    return Path(spec.origin).parent

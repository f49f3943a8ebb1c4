"""bertviz's views rewritten to draw offline and in JupyterLab, each in its own <iframe>.

course_lib.viz (Lessons 03 and 06) calls ``bertviz.head_view`` and ``bertviz.model_view`` and
hands their HTML to ``offline_view``, which returns what the notebook cell shows:

    >>> import bertviz, torch
    >>> att = [torch.full((1, 1, 2, 2), 0.5)]                  # one layer, one head, T = 2
    >>> view = bertviz.head_view(att, ["a", "b"], html_action="return")
    >>> offline_view(view.data, "head view", 120).data[:65]
    '<div class="course-lib-bertviz"><iframe title="bertviz head view"'

Why the views need rewriting: bertviz 1.4.1 loads require.js, d3 and jQuery from a public CDN each
time a view is shown, so offline, behind a firewall, or in JupyterLab (which has no require.js) the
view stays empty. Here the view is rewritten to call bertviz's drawing code directly, with d3 5.7.0
(shipped inside the ``mpld3`` wheel) and jQuery (shipped inside the ``xstatic-jquery`` wheel) read
from the installed packages and inlined, so it needs no network. Each view lives in its own
``<iframe srcdoc=...>``: several views on one page keep their own copies of the libraries and
element ids, and nothing leaks into JupyterLab.

What it relies on: the layout of bertviz 1.4.1's HTML (the require.js tag, one inline script
with one ``require.config`` and one ``requirejs([...], function ($, d3) {...})``, the
``const params = ...`` template line, one random element id), and the d3 and jQuery files of the
pinned ``mpld3`` and ``xstatic-jquery`` wheels. If an upgrade of bertviz (or of those wheels)
changes any of it, the rewrite raises a RuntimeError naming the change and the version to install,
rather than showing an empty view (bertviz is pinned to ``BERTVIZ_VERSION``).

Views go into the stored notebook, and nbval compares them, so they are deterministic: the same
inputs give the same bytes (the random id becomes a hash of the view, no timestamps). The iframe
runs only in a trusted output, as every interactive output does: a notebook you ran yourself, or
one marked with ``jupyter trust``, which ``python3 course.py`` does for the lessons.
"""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.util
import re
from importlib import metadata
from pathlib import Path

from IPython.display import HTML

BERTVIZ_VERSION = "1.4.1"  # the version whose HTML and JavaScript the rewrite below expects

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


def offline_view(bertviz_html: str, kind: str, height: float) -> HTML:
    """Rewrite bertviz's HTML into an iframe that draws the view with no network.

    bertviz_html: what ``bertviz.head_view`` or ``bertviz.model_view`` returns with
    ``html_action="return"`` (its ``.data``); kind: "head view" or "model view", for the title
    and the errors; height: the iframe's starting height in px (it then grows to fit the view).
    """
    body, script = _rewrite(bertviz_html, kind)
    d3, jquery, credits = _js_libraries()
    # "course_lib.viz" in the comment below is what learners call, and stored notebook outputs
    # hold these bytes: it stays as it is.
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

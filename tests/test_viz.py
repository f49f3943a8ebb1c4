"""course_lib.viz: attention heatmaps, and bertviz's views working offline in a real browser.

The matplotlib tests read the figure back (its axes, its tick labels). The bertviz tests check
the HTML the views return (deterministic, small, nothing loaded from elsewhere, a loud error if
bertviz changes), then open it where a learner would: in headless Chromium from a file, and in a
real JupyterLab running a notebook through its menus, with every request that would leave the
machine blocked. The browser tests skip when Debian's chromium or the playwright package is
missing (scripts/install_browser.sh installs chromium).
"""

import html
import json
import re
from importlib import metadata
from pathlib import Path

import bertviz
import browser
import nbformat
import pytest
import torch
from IPython.display import HTML
from nbformat.sign import NotebookNotary

from course_lib import bertviz_offline, viz
from course_lib.viz import head_view, model_view, plot_attention

ROOT = Path(__file__).resolve().parent.parent
TOKENS = "To be , or not to be :".split()  # T = 8


def causal_attention(n_layer: int = 2, n_head: int = 4, T: int = 8, seed: int = 0):
    """A list of n_layer random causal attention maps, each (1, n_head, T, T), rows summing to 1."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    return [
        torch.randn(1, n_head, T, T, generator=g).masked_fill(~mask, float("-inf")).softmax(-1)
        for _ in range(n_layer)
    ]


def page_of(view: HTML) -> str:
    """The page inside a view's <iframe srcdoc="...">."""
    found = re.fullmatch(
        r'<div class="course-lib-bertviz"><iframe [^>]*srcdoc="([^"]*)"></iframe></div>', view.data
    )
    assert found, view.data[:300]
    return html.unescape(found[1])


def params_of(view: HTML) -> dict:
    """The data bertviz draws, as embedded in the view's script."""
    found = re.search(r"^ *const params = (.*);$", page_of(view), re.M)
    assert found
    return json.loads(found[1])


# ---------------------------------------------------------------------------------------------
# plot_attention


def heatmaps(fig):
    return [ax for ax in fig.axes if ax.images]  # the colour bar's axes hold no image


def test_plot_attention_draws_one_heatmap_per_head_labelled_with_the_tokens():
    att = causal_attention(n_layer=1, n_head=4)[0][0]  # (n_head, T, T)
    fig = plot_attention(att, TOKENS)
    axes = heatmaps(fig)
    assert len(axes) == 4
    for h, ax in enumerate(axes):
        assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS
        assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS
        assert ax.get_title() == f"head {h}"
        torch.testing.assert_close(torch.tensor(ax.images[0].get_array()), att[h])
    assert any(ax.get_ylabel() == "attention weight" for ax in fig.axes)  # the colour bar


def test_plot_attention_accepts_a_single_head_and_the_output_of_multi_head_attention():
    att = causal_attention(n_layer=1, n_head=3)[0]  # (1, n_head, T, T), as MultiHeadAttention
    assert len(heatmaps(plot_attention(att, TOKENS))) == 3
    one = heatmaps(plot_attention(att[0, 1], TOKENS, title="head 1"))  # (T, T)
    assert len(one) == 1 and one[0].get_title() == ""


def test_plot_attention_stays_readable_at_40_tokens():
    tokens = [f"w{i}" for i in range(40)]
    small = plot_attention(causal_attention(1, 4, T=8)[0][0], TOKENS)
    large = plot_attention(causal_attention(1, 4, T=40)[0][0], tokens)
    ax = heatmaps(large)[0]
    assert len(ax.get_xticklabels()) == 40  # every token labelled, none skipped
    assert ax.get_xticklabels()[0].get_fontsize() >= 7
    # Each heatmap grows with T (0.17 inch a token), and fewer go in a row.
    w_small = small.get_size_inches()[0] / 4
    w_large = large.get_size_inches()[0] / 2
    assert w_large >= 0.17 * 40 > w_small


def test_plot_attention_shows_whitespace_tokens_and_escapes_dollars():
    tokens = ["a", "\n", " ", "$x$", "b"]
    fig = plot_attention(torch.full((5, 5), 0.2), tokens)
    labels = [t.get_text() for t in heatmaps(fig)[0].get_xticklabels()]
    assert labels == ["a", "\\n", " ", r"\$x\$", "b"]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((8,), r"expected \(n_head, T, T\)"),
        ((4, 8, 7), "square"),
        ((2, 4, 8, 8), r"weights\[0\]"),
    ],
)
def test_plot_attention_rejects_bad_shapes(shape, message):
    with pytest.raises(ValueError, match=message):
        plot_attention(torch.rand(shape), TOKENS)


def test_plot_attention_rejects_tokens_that_do_not_fit():
    att = torch.rand(4, 8, 8)
    with pytest.raises(ValueError, match="7 tokens for attention over T=8"):
        plot_attention(att, TOKENS[:7])
    with pytest.raises(ValueError, match="list of strings"):
        plot_attention(att, list(range(8)))
    with pytest.raises(ValueError, match="NaN"):
        plot_attention(torch.full((8, 8), float("nan")), TOKENS)


# ---------------------------------------------------------------------------------------------
# head_view and model_view: the HTML


@pytest.mark.parametrize("view", [head_view, model_view])
def test_views_are_deterministic_and_differ_with_their_content(view):
    first = view(causal_attention(), TOKENS)
    assert isinstance(first, HTML)
    assert view(causal_attention(), TOKENS).data == first.data  # byte for byte, for nbval
    other = view(causal_attention(seed=1), TOKENS)
    root_id = params_of(first)["root_div_id"]
    assert re.fullmatch(r"bertviz-[0-9a-f]{32}", root_id)
    assert root_id != params_of(other)["root_div_id"]  # content-derived, not constant
    assert page_of(first).count(root_id) == 2  # the <div id=...> and the script's reference


@pytest.mark.parametrize("view", [head_view, model_view])
def test_views_load_nothing_from_elsewhere(view):
    page = page_of(view(causal_attention(), TOKENS))
    assert page.count("<script>") == 4  # d3, jQuery, bertviz's drawing code, the height fit
    body = page.split("</head>")[1]  # past the libraries: the view, bertviz's code
    assert not re.search(r"\brequire(js)?\s*[.(]", body)  # no require.js, no AMD loading
    assert "cdnjs" not in body and " src=" not in page and "<link" not in body
    assert "})(window.jQuery, window.d3);" in body


def test_views_round_the_weights_and_embed_them_once():
    att = causal_attention()
    view = head_view(att, TOKENS, decimals=2)
    weights = torch.tensor(params_of(view)["attention"][0]["attn"], dtype=torch.float64)
    torch.testing.assert_close(weights, torch.cat(att).double(), atol=0.005, rtol=0)
    assert torch.equal(weights, weights.mul(100).round().div(100))  # 2 decimals exactly
    assert page_of(view).count('"attn"') == 1  # bertviz's template would embed them twice
    weights = json.dumps(params_of(head_view(att, TOKENS, decimals=3))["attention"])
    decimals = [len(n) for n in re.findall(r"\d\.(\d+)", weights)]
    assert max(decimals) == 3


def test_views_accept_layers_without_the_batch_dimension():
    att = causal_attention()
    squeezed = [a[0] for a in att]  # (n_head, T, T) each
    assert model_view(squeezed, TOKENS).data == model_view(att, TOKENS).data


def test_view_options_reach_bertviz():
    att = causal_attention(n_layer=3)
    params = params_of(head_view(att, TOKENS, layer=2, heads=[1], include_layers=[0, 2]))
    assert (params["layer"], params["heads"], params["include_layers"]) == (2, [1], [0, 2])
    params = params_of(model_view(att, TOKENS, include_layers=[1], include_heads=[0, 3]))
    assert (params["include_layers"], params["include_heads"]) == ([1], [0, 3])
    assert torch.tensor(params["attention"][0]["attn"]).shape == (1, 2, 8, 8)
    assert params["display_mode"] == "light"


def test_views_show_whitespace_tokens():
    tokens = [*TOKENS[:6], "\n", "\t"]
    assert params_of(model_view(causal_attention(), tokens))["attention"][0]["left_text"][6:] == [
        "\\n",
        "\\t",
    ]


def test_tokens_cannot_break_the_page_or_fool_the_checks():
    tokens = ["</script><b>", "<!--", "require(", "cdnjs", "const params = 1;", "});", "a", "b"]
    for view in (head_view, model_view):
        page = page_of(view(causal_attention(), tokens))
        assert page.count("</script>") == 4  # only the four real closing tags
        assert params_of(view(causal_attention(), tokens))["attention"][0]["left_text"] == tokens


def test_view_size_is_reasonable():
    # d3 and jQuery, escaped into srcdoc, are about 340 KB of every view; the weights of 2
    # layers x 4 heads x 32 tokens, rounded to 2 decimals, about 45 KB more.
    tokens = [f"t{i}" for i in range(32)]
    for view in (head_view, model_view):
        size = len(view(causal_attention(2, 4, T=32), tokens).data.encode())
        assert 300_000 < size < 450_000, f"{view.__name__}: {size:,} bytes"


@pytest.mark.parametrize(
    ("attention", "tokens", "kwargs", "message"),
    [
        (causal_attention()[0], TOKENS, {}, r"one tensor per layer.*\[att\]"),
        ([], TOKENS, {}, "non-empty list"),
        ([torch.rand(2, 4, 8, 8)], TOKENS, {}, r"att\[0:1\]"),
        ([torch.rand(4, 8, 7)], TOKENS, {}, r"\(1, n_head, T, T\)"),
        ([torch.rand(4, 8, 8), torch.rand(2, 8, 8)], TOKENS, {}, "same n_head and T"),
        (causal_attention(), TOKENS[:7], {}, "7 tokens for attention over T=8"),
        (causal_attention(), "To be", {}, "list of strings"),
        ([torch.full((4, 8, 8), float("nan"))], TOKENS, {}, "NaN"),
        (causal_attention(), TOKENS, {"layer": 1, "include_layers": [0]}, "not among"),
        (causal_attention(), TOKENS, {"heads": [4]}, r"head index in 0\.\.3"),
        (causal_attention(), TOKENS, {"include_layers": [2]}, r"layer index in 0\.\.1"),
        (causal_attention(), TOKENS, {"decimals": 9}, "decimals=9"),
    ],
)
def test_head_view_rejects_bad_input_with_the_fix(attention, tokens, kwargs, message):
    with pytest.raises(ValueError, match=message):
        head_view(attention, tokens, **kwargs)


def test_views_refuse_too_many_tokens_or_weights():
    T = viz.MAX_TOKENS + 1
    with pytest.raises(ValueError, match=r"MAX_TOKENS=64.*tokens\[:32\]"):
        head_view(causal_attention(1, 1, T=T), [str(i) for i in range(T)])
    big = causal_attention(n_layer=5, n_head=4, T=64)  # 5 * 4 * 64 * 64 = 81,920 weights
    tokens = [str(i) for i in range(64)]
    with pytest.raises(ValueError, match=r"MAX_WEIGHTS=65,536.*include_layers"):
        model_view(big, tokens)
    assert model_view(big, tokens, include_layers=[0, 1]).data  # a selection of layers fits
    with pytest.raises(ValueError, match="display_mode"):
        model_view(big, tokens, display_mode="blue")


def test_bertviz_is_the_pinned_version():
    assert metadata.version("bertviz") == viz.BERTVIZ_VERSION


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda h: h.replace("require.min.js", "require.js"), "require.js <script> tag"),
        (
            lambda h: h.replace("requirejs(['jquery', 'd3']", "requirejs(['d3', 'jquery']"),
            "requirejs",
        ),
        (lambda h: h.replace("require.config", "requirejs.config"), "require.config"),
        (lambda h: h.replace("; // HACK: ", "; // "), "const params = <JSON>"),
        (lambda h: re.sub(r"bertviz-([0-9a-f]{32})", r"bv-\1", h), "random element id"),
        (lambda h: h + "<script>more()</script>\n", "one inline <script>"),
    ],
)
def test_a_change_in_bertviz_fails_loudly(monkeypatch, change, what):
    original = bertviz.head_view

    def changed_head_view(*args, **kwargs):
        return HTML(change(original(*args, **kwargs).data))

    monkeypatch.setattr(bertviz, "head_view", changed_head_view)
    with pytest.raises(RuntimeError, match=r"bertviz 1\.4\.1") as error:
        head_view(causal_attention(), TOKENS)
    assert what in str(error.value) and "pip install bertviz==1.4.1" in str(error.value)


def test_a_d3_other_than_v4_or_v5_fails_loudly(monkeypatch, tmp_path):
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "d3.v5.min.js").write_text("// https://d3js.org v6.0.0 Copyright\n")
    real = bertviz_offline._package_dir
    monkeypatch.setattr(
        bertviz_offline, "_package_dir", lambda name: tmp_path if name == "mpld3" else real(name)
    )
    bertviz_offline._js_libraries.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="not d3 v4 or v5"):
            head_view(causal_attention(), TOKENS)
    finally:
        bertviz_offline._js_libraries.cache_clear()


def test_a_missing_library_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(bertviz_offline.importlib.util, "find_spec", lambda name: None)
    bertviz_offline._js_libraries.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"mpld3 is not installed.*mpld3==0\.5\.12"):
            head_view(causal_attention(), TOKENS)
    finally:
        bertviz_offline._js_libraries.cache_clear()


# ---------------------------------------------------------------------------------------------
# In a real browser: Debian's Chromium, nothing allowed to leave the machine

needs_browser = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))


@pytest.fixture(scope="module")
def chromium():
    with browser.chromium() as b:
        yield b


def lines_in(frame) -> int:
    return frame.evaluate("document.querySelectorAll('svg line').length")


def view_frames(page, selector: str = "iframe[title^='bertviz']"):
    """The frames of the bertviz views on the page, once each has drawn its lines."""
    iframes = page.locator(selector)
    frames = []
    for i in range(iframes.count()):
        iframes.nth(i).scroll_into_view_if_needed()
        frame = iframes.nth(i).element_handle().content_frame()
        frame.wait_for_function("document.querySelectorAll('svg line').length > 0", timeout=15_000)
        frames.append(frame)
    return frames


@needs_browser
def test_views_draw_offline_in_chromium(chromium, tmp_path):
    att = causal_attention(n_layer=2, n_head=4, T=8)
    tokens = ["To", "be", "</script>", "or", "\n", "to", "be", ":"]
    views = [head_view(att, tokens), model_view(att, tokens)]  # two views, one page
    path = tmp_path / "views.html"
    path.write_text(
        "<!DOCTYPE html><html><body>" + "".join(v.data for v in views) + "</body></html>"
    )
    page, log = browser.new_page(chromium)
    page.goto(path.as_uri())
    head, model = view_frames(page)

    assert lines_in(head) == 4 * 8 * 8  # head view: one line per head x query x key
    assert head.locator("#left text").all_text_contents() == [*tokens[:4], "\\n", *tokens[5:]]
    assert lines_in(model) == 2 * 4 * 8 * 8  # model view: every layer's every head
    # The iframes grew to fit their views.
    for frame in (head, model):
        svg_height = frame.evaluate("document.querySelector('svg').getBoundingClientRect().height")
        iframe_height = frame.frame_element().bounding_box()["height"]
        assert iframe_height >= svg_height > 100

    # Interactions work (d3 v5's event handlers): hover a token in the head view, and its lines
    # in every head light up; click a head in the model view, and it opens enlarged.
    head.locator("#left text").nth(3).hover()
    assert head.locator("line[visibility='visible']").count() == 4 * 8
    model.locator("rect.attn_background").first.click(force=True)
    assert model.locator(".attn-line-group line").count() == 8 * 8

    assert all(browser.is_local(url) for url in log.requests), log.requests
    assert not log.blocked and not log.errors, (log.blocked, log.errors)


TINY_NOTEBOOK = None  # stands for a small notebook that the test writes itself
# Lesson notebooks that show views join this list once they exist, e.g.
# ROOT / "notebooks" / "03_attention.ipynb". The test works on a copy.
LAB_NOTEBOOKS = [
    TINY_NOTEBOOK,
    *(ROOT / "notebooks" / f for f in ("03_attention.ipynb", "04_decoder_stack.ipynb")),
]


def tiny_notebook() -> nbformat.NotebookNode:
    """Three cells: random causal attention (2 layers, 4 heads, 8 tokens), a head view and a
    model view, stored with their outputs as a run of the notebook would store them."""
    setup = """\
import torch
from course_lib.viz import head_view, model_view
g = torch.Generator().manual_seed(0)
tokens = "To be , or not to be :".split()
mask = torch.ones(8, 8, dtype=torch.bool).tril()
att = [torch.randn(1, 4, 8, 8, generator=g).masked_fill(~mask, float("-inf")).softmax(-1)
       for _ in range(2)]"""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    namespace: dict = {}
    exec(setup, namespace)
    nb.cells = [nbformat.v4.new_code_cell(setup, execution_count=1)]
    for n, source in enumerate(["head_view(att, tokens)", "model_view(att, tokens)"], start=2):
        data = {"text/html": eval(source, namespace).data, "text/plain": "<HTML object>"}
        output = nbformat.v4.new_output("execute_result", data=data, execution_count=n)
        nb.cells.append(nbformat.v4.new_code_cell(source, execution_count=n, outputs=[output]))
    return nb


def click_menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-item", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()


@needs_browser
@pytest.mark.slow
@pytest.mark.parametrize("notebook", LAB_NOTEBOOKS, ids=lambda p: p.name if p else "tiny")
def test_views_draw_in_jupyterlab_offline(chromium, tmp_path, notebook):
    """Open the notebook in JupyterLab: its stored views draw; clear them, Run All Cells through
    the menus as a learner would, and the new views draw too. Nothing leaves the machine."""
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    (state / "data").mkdir(parents=True)
    nb = tiny_notebook() if notebook is TINY_NOTEBOOK else nbformat.read(notebook, as_version=4)
    # Trusted, as `python3 course.py` trusts the lessons: JupyterLab runs no script of an
    # untrusted notebook's stored outputs.
    NotebookNotary(data_dir=str(state / "data")).sign(nb)
    nbformat.write(nb, root / "views.ipynb")
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    outputs = ".jp-OutputArea-output iframe[title^='bertviz']"

    with browser.jupyter_lab(root, state) as url:
        page, log = browser.new_page(chromium)
        page.goto(url.replace("/lab?", "/lab/tree/views.ipynb?"))
        cells = page.locator(".jp-Notebook .jp-Cell")
        cells.nth(len(nb.cells) - 1).wait_for(state="attached", timeout=45_000)
        page.locator(outputs).first.wait_for(state="attached")
        stored = [lines_in(frame) for frame in view_frames(page, outputs)]

        page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=45_000)
        click_menu(page, "Edit", "Clear Outputs of All Cells")
        page.locator(outputs).first.wait_for(state="detached")
        click_menu(page, "Run", "Run All Cells")
        page.wait_for_function(
            f"""[...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                .filter(p => /\\[\\d+\\]/.test(p.textContent)).length === {n_code}""",
            timeout=120_000,
        )
        errors = page.locator("[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, errors.first.inner_text()[-2000:]  # a traceback, a warning
        ran = [lines_in(frame) for frame in view_frames(page, outputs)]
        page.context.close()

    if notebook is TINY_NOTEBOOK:
        assert stored == ran == [4 * 8 * 8, 2 * 4 * 8 * 8]  # head view, model view
    else:
        assert len(ran) == len(stored), "running the notebook shows another number of views"
    assert all(browser.is_local(url) for url in log.requests), log.requests
    assert not log.blocked, log.blocked
    view_errors = [e for e in log.errors if "about:srcdoc" in e or "uncaught" in e]
    assert not view_errors, view_errors


def test_views_of_a_course_gpt_equal_views_of_its_attention():
    from course_lib.model import GPT, GPTConfig
    from course_lib.tokenizer import BPETokenizer

    tok = BPETokenizer()
    tok.train("to be or not to be, that is the question " * 20, vocab_size=280)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=280, block_size=32, n_layer=2, n_head=2, n_embd=16))
    text = "to be or not to be"
    ids = tok.encode(text)
    with torch.no_grad():
        att = model(torch.tensor([ids]), need_weights=True).attentions
    tokens = [tok.decode([i]) for i in ids]
    assert viz.head_view(model, tok, text).data == viz.head_view(att, tokens).data
    assert viz.model_view(model, tok, text).data == viz.model_view(att, tokens).data
    assert model.training  # the view leaves the model's mode as it was


def test_view_of_a_course_gpt_rejects_empty_text():
    from course_lib.model import GPT, GPTConfig
    from course_lib.tokenizer import BPETokenizer

    model = GPT(GPTConfig(vocab_size=260, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="text is empty"):
        viz.head_view(model, BPETokenizer(), "")

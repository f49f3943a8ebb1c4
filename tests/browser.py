"""A headless browser for tests that look at a page as a learner would (tests/test_viz.py).

Debian's Chromium (``/usr/bin/chromium``, installed by ``scripts/install_browser.sh``), driven
by the ``playwright`` package. Playwright's own browser builds are never used: downloading them
needs the internet, which the course promises not to need after installation.

Every request a page makes is recorded, and any that would leave this machine is blocked, so a
test proves that what it shows works offline. ``jupyter_lab`` starts a real JupyterLab server
on a free local port, isolated from the user's settings and workspaces.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # as root (CI) Chromium refuses to start with its sandbox
    "--disable-gpu",
    "--disable-background-networking",  # no update checks, no field trials, no safe browsing
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_HINT = "browser tests need Debian's chromium: run scripts/install_browser.sh"


def missing() -> str | None:
    """Why browser tests cannot run here (a skip message), or None when they can."""
    if not CHROMIUM.exists():
        return f"{INSTALL_HINT} ({CHROMIUM} not found)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"{INSTALL_HINT}, and pip install the playwright package (not found)"
    return None


def is_local(url: str) -> bool:
    """True for a URL that stays on this machine: a file, inline data, or a loopback server."""
    parts = urlsplit(url)
    if parts.scheme in ("file", "data", "about", "blob", "chrome-error"):
        return True
    return parts.hostname in ("127.0.0.1", "localhost", "::1")


@dataclass
class PageLog:
    """What a page did: every URL it requested, the ones blocked, its console errors."""

    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def chromium() -> Iterator:
    """A headless Debian Chromium (a playwright ``Browser``), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, width: int = 1280, height: int = 1600):
    """(page, log): a page in a fresh context that blocks every request leaving this machine."""
    context = browser.new_context(viewport={"width": width, "height": height})
    log = PageLog()

    def route(route) -> None:
        url = route.request.url
        if is_local(url):
            route.continue_()
        else:
            log.blocked.append(url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("request", lambda request: log.requests.append(request.url))
    page.on("console", lambda msg: msg.type == "error" and log.errors.append(_describe(msg)))
    page.on("pageerror", lambda error: log.errors.append(f"uncaught: {error}"))
    return page, log


def _describe(msg) -> str:
    where = msg.location.get("url", "") if msg.location else ""
    return f"{msg.text} (at {where or 'unknown'})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_lab(root_dir: Path, state_dir: Path, timeout: float = 60) -> Iterator[str]:
    """Run ``jupyter lab`` on ``root_dir``; yield its URL with the token (``.../lab?token=...``).

    ``state_dir`` holds its config, data (trusted notebooks), settings, workspaces and runtime
    files, so neither the user's JupyterLab state nor a password they set gets in the way, and
    the test leaves nothing behind. The server is stopped afterwards.
    """
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    for var, sub in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),  # also where notebook trust is kept (nbsignatures.db)
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTERLAB_SETTINGS_DIR", "settings"),
        ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
    ]:
        env[var] = str(state_dir / sub)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        # No news feed and no update check: they would ask the internet.
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = state_dir / "jupyter.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no $http_proxy
        deadline = time.monotonic() + timeout
        while True:
            try:
                with direct.open(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"jupyter lab did not start on port {port}:\n{log_path.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.2)
        yield f"{url}/lab?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

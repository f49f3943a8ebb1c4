"""The README's first command, `python3 course.py`, opens the course in JupyterLab, root or not."""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted(nb.name for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
NEWS_SETTINGS = "@jupyterlab/apputils-extension:notification"


def _course_py():
    spec = importlib.util.spec_from_file_location("course", ROOT / "course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_course_py_gives_jupyterlab_allow_root_when_run_as_root(monkeypatch):
    course = _course_py()
    monkeypatch.setattr(os, "geteuid", lambda: 0, raising=False)
    assert "--allow-root" in course.lab_command([])


def test_course_py_gives_jupyterlab_no_allow_root_for_other_users_or_on_windows(monkeypatch):
    course = _course_py()
    monkeypatch.setattr(os, "geteuid", lambda: 1000, raising=False)
    assert "--allow-root" not in course.lab_command([])
    monkeypatch.delattr(os, "geteuid", raising=False)  # Windows has no geteuid
    assert "--allow-root" not in course.lab_command([])


def test_course_py_lab_passes_what_follows_to_jupyterlab_on_the_notebooks(monkeypatch):
    course = _course_py()
    monkeypatch.setattr(os, "geteuid", lambda: 1000, raising=False)
    cmd = course.lab_command(["--ip", "0.0.0.0"])
    assert cmd[1:4] == ["-m", "jupyter", "lab"]
    assert cmd[-3:] == ["--ip", "0.0.0.0", ROOT / "notebooks"]


WITHOUT_HEADLESS = [
    (["--only", "05"], "--only"),
    (["test", "--save"], "--save"),
    (["--only", "05", "--save"], "--only and --save"),
]


@pytest.mark.parametrize(("argv", "used"), WITHOUT_HEADLESS)
def test_course_py_says_only_and_save_need_headless(monkeypatch, capsys, argv, used):
    course = _course_py()
    monkeypatch.setattr(sys, "argv", ["course.py", *argv])
    monkeypatch.setattr(course, "setup", lambda: pytest.fail("set up before refusing"))
    with pytest.raises(SystemExit) as stop:
        course.main()
    assert stop.value.code == 2  # a usage error, as argparse says it
    said = capsys.readouterr().err
    assert f"{used}: only with --headless, which runs the notebooks without JupyterLab" in said


def _learners_python() -> str | None:
    """`python3` as the README says, or `python3.11` (its advice when python3 is not 3.11)."""
    for name in ("python3", "python3.11"):
        exe = shutil.which(name)
        is_311 = "import sys; sys.exit(sys.version_info[:2] != (3, 11))"
        if exe and subprocess.run([exe, "-c", is_311], capture_output=True).returncode == 0:
            return exe
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    proc: subprocess.Popen
    log: Path

    def request(self, path: str, method: str = "GET") -> dict:
        req = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        # Straight to the server, whatever http_proxy says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """`python3 course.py` as a learner types it, in its own process group, on a free port.

    Jupyter Server takes its port and token from JUPYTER_PORT and JUPYTER_TOKEN. A
    JUPYTER_CONFIG_DIR of the test's own keeps the developer's ~/.jupyter out and says
    `open_browser: false`, so no browser opens; Jupyter's runtime and data files go to the test's
    folder too. The course stops as File > Shut Down stops it, and its process group is killed
    whatever happens.
    """
    if os.name == "nt":
        pytest.skip("the test stops the course through a POSIX process group")
    python = _learners_python()
    if python is None:
        pytest.skip("no Python 3.11 on PATH as python3 or python3.11: course.py needs it")
    tmp = tmp_path_factory.mktemp("front_door")
    config = tmp / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text('{"ServerApp": {"open_browser": false}}')
    port, token = _free_port(), "front-door-test"
    env = {
        **os.environ,
        "JUPYTER_PORT": str(port),
        "JUPYTER_PORT_RETRIES": "0",  # that port or fail, never another server's
        "JUPYTER_TOKEN": token,
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp / "data"),  # `jupyter trust` signs into the test's own
    }
    log = tmp / "course.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [python, "course.py"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    lab = Lab(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"course.py exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                lab.request("/api/status")
                break
            except OSError:  # not listening yet (URLError, a reset, a time-out)
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in 90 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield lab
        lab.request("/api/shutdown", method="POST")  # as File > Shut Down does
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):  # anything left of its process group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_python3_course_py_opens_jupyterlab_on_the_lesson_notebooks(lab):
    assert LESSONS, "the repository has lesson notebooks"
    listed = {item["name"] for item in lab.request("/api/contents/")["content"]}
    assert set(LESSONS) <= listed


@pytest.mark.slow
def test_the_course_lab_does_not_ask_about_or_fetch_jupyter_news(lab):
    settings = lab.request(f"/lab/api/settings/{NEWS_SETTINGS}")
    assert settings["schema"]["properties"]["fetchNews"]["default"] == "false"
    assert "fetchNews" not in settings["settings"], "a default: a learner may still turn it on"

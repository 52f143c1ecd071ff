"""The page at ``GET /`` in headless Chromium: type sentences, press the button, read the
translation.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (NUL-separated
JSON on file descriptors 3 and 4), which needs nothing beyond the standard library. The test skips
only when no Chromium is installed (``.ci/run`` installs Debian's ``chromium`` package).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
import warnings

import pytest

from _serve_helpers import Server
from conftest import sample_lines

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class DevTools:
    """A headless Chromium and a minimal DevTools protocol client over its pipe."""

    def __init__(self, executable: str, profile: str):
        cmd_r, self._cmd_w = os.pipe()  # we write commands, the browser reads fd 3
        self._resp_r, resp_w = os.pipe()  # the browser writes fd 4, we read
        args = [executable, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-pipe",
                "about:blank"]
        # The browser wants the pipe on fds 3 and 4 exactly: a small Python step moves them there
        # (from fds above 9, so neither move overwrites the other) and starts the browser.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_r, resp_w)]
        for fd in (cmd_r, resp_w):
            os.close(fd)
        move = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); "
                "os.dup2(w, 4); os.close(r); os.close(w); os.execvp(sys.argv[3], sys.argv[3:])")
        self.proc = subprocess.Popen([sys.executable, "-c", move, *map(str, high), *args],
                                     pass_fds=high, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for fd in high:
            os.close(fd)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._resp_r], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._resp_r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed its pipe (exit {self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 20.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_event(self, method: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._message(deadline))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it is going away in any case
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._cmd_w)
        os.close(self._resp_r)


class Page:
    def __init__(self, browser: DevTools, url: str):
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget",
                                    {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable")
        self.send("Page.navigate", {"url": url})
        browser.wait_event("Page.loadEventFired")

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"{expression} stayed empty for {timeout} s")

    def click(self, element_id: str) -> None:
        box = self.evaluate(f"(() => {{ const r = document.getElementById('{element_id}')"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, "
                            "r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1],
                                                   "button": "left", "clickCount": 1})


def find_browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    message = ("NO BROWSER: the page test did NOT run, no Chromium is installed "
               "(apt-get install chromium; .ci/run does this)")
    warnings.warn(message)
    pytest.skip(message)


def test_the_page_translates_what_is_typed(experiment, tmp_path):
    browser_path = find_browser()
    lines = sample_lines("test", "src", 2)
    srv = Server(experiment.checkpoint, tmp_path / "page.log")
    browser = None
    try:
        with srv.client() as client:
            want = [t["text"] for t in
                    client.post("/translate", json={"texts": lines}).json()["translations"]]
        browser = DevTools(browser_path, str(tmp_path / "profile"))
        page = Page(browser, srv.url + "/")
        page.wait_for("document.getElementById('model').textContent")  # /model answered
        page.evaluate("document.getElementById('source').focus()")
        page.send("Input.insertText", {"text": "\n".join(lines)})
        page.click("translate")
        shown = page.wait_for("document.getElementById('output').textContent")
        assert shown.split("\n") == want
        assert page.evaluate("document.getElementById('error').textContent") == ""
        assert "tiny" in page.evaluate("document.getElementById('model').textContent")
        assert '"POST /translate" 200 2 sentences' in srv.log().split("GET /model")[-1]
    finally:
        if browser is not None:
            browser.close()
        assert srv.stop() == 0


def test_the_page_keeps_to_the_servers_limits(experiment, tmp_path):
    """A server that allows less than the model's recipe: beam 1 at most (the recipe's default
    is larger) and one text a request. The page caps its beam box, sends no beam it was not
    asked for, and sends two lines as two requests."""
    browser_path = find_browser()
    assert experiment.recipe.decode.beam_size > 1
    lines = sample_lines("test", "src", 2)
    srv = Server(experiment.checkpoint, tmp_path / "page.log", "--max-beam-size", "1",
                 "--max-texts", "1")
    browser = None
    try:
        with srv.client() as client:
            want = [client.post("/translate", json={"text": line, "beam_size": 1}).json()
                    ["translations"][0]
                    ["text"] for line in lines]
        browser = DevTools(browser_path, str(tmp_path / "profile"))
        page = Page(browser, srv.url + "/")
        page.wait_for("document.getElementById('model').textContent")
        assert page.evaluate("document.getElementById('beam').max") == "1"
        assert page.evaluate("document.getElementById('beam').value") == "1"
        page.evaluate("document.getElementById('source').focus()")
        page.send("Input.insertText", {"text": "\n".join(lines)})
        page.click("translate")
        shown = page.wait_for("document.getElementById('output').textContent")
        assert page.evaluate("document.getElementById('error').textContent") == ""
        assert shown.split("\n") == want
        assert srv.log().split("GET /model")[-1].count('"POST /translate" 200 1 sentences') == 2
    finally:
        if browser is not None:
            browser.close()
        assert srv.stop() == 0

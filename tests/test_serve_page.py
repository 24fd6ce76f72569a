"""The chat page in a real headless Chromium (Debian's `chromium`): load it from a server subprocess, type a
message, send it, and read the streamed answer from the page; a screenshot is kept as the test's artifact.

Chromium is driven over its DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ending in NUL
on file descriptors 3 and 4), so no browser-automation package is needed."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from helpers import CHARS, KEY, REPO, save_run, start_server, stop_server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "tests" / "artifacts"


class DevTools:
    """One page of a headless Chromium, commanded over the DevTools pipe."""

    def __init__(self, profile: Path):
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        # The child reads commands on fd 3 and writes answers on fd 4.
        os.set_inheritable(to_browser_r, True)
        os.set_inheritable(from_browser_w, True)
        args = [CHROMIUM, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", f"--user-data-dir={profile}", "--window-size=1000,700", "about:blank"]  # fmt: skip

        def fds() -> None:
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(args, preexec_fn=fds, pass_fds=(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, close_fds=False)  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.next_id, self.buffer = 0, b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.from_browser, 1 << 16)
                if not chunk:
                    raise AssertionError("chromium closed its DevTools pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, method: str, **params) -> dict:
        return self.call(method, self.session, **params)

    def js(self, expression: str):
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install -y chromium (as .ci/run does)")
def test_the_chat_page_streams_an_answer(tmp_path):
    run = save_run(tmp_path / "pagerun", {"kind": "char", "chars": CHARS}, len(CHARS))
    server = start_server(tmp_path, f"run={run}", "device.device=cpu")
    browser = DevTools(tmp_path / "profile")
    try:
        expected = httpx.post(f"{server.url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                              json={"prompt": "To be", "max_tokens": 30, "temperature": 0}).json()  # fmt: skip
        browser.page("Page.enable")
        browser.page("Page.navigate", url=server.url + "/")
        deadline = time.monotonic() + 20
        while browser.js("document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.05)
        # a character model has no chat template: the page offers completion; set it as a user would
        browser.js(f"""document.getElementById('key').value = {json.dumps(KEY)};
                       document.getElementById('mode').value = 'complete';
                       document.getElementById('temperature').value = '0';
                       document.getElementById('max_tokens').value = '30';
                       document.getElementById('input').value = 'To be';
                       document.getElementById('send').click();""")
        state = None
        while time.monotonic() < deadline:
            state = browser.js("(document.querySelector('.assistant') || {dataset: {}}).dataset.state")
            if state in ("done", "error"):
                break
            time.sleep(0.05)
        answer = browser.js("document.querySelector('.msg.assistant, .msg.error').textContent")
        shot = browser.page("Page.captureScreenshot", format="png")["data"]
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "chat_page.png").write_bytes(base64.b64decode(shot))
        assert state == "done", answer
        assert answer == expected["choices"][0]["text"]
    finally:
        browser.close()
        stop_server(server)

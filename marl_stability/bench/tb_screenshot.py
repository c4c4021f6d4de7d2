"""Look at what a user sees: start TensorBoard on a log directory, open it in headless Chromium (Debian's
``chromium`` package: ``apt-get install chromium``), take screenshots and check what the pages show.

    python -m marl_stability.bench.tb_screenshot LOGDIR [--out DIR] [--port 6123]

LOGDIR is a sweep's ``runs/`` folder (runs named ``<arm>/seed_<n>``) or a single run. Writes to --out:

- ``timeseries.png``: the first screen of Time Series as TensorBoard opens it; ``timeseries_all_points.png``: the
  same with "Ignore outliers in chart scaling" unticked (every point of the team return on its chart);
- ``story.png``: the deep link ``reproduce``/``ablate`` print (one colour per arm, story cards pinned);
- ``hparams.png`` (table view), ``hparams_parallel.png`` (the parallel-coordinates view, opened by a click over
  the DevTools protocol), ``text.png`` (the runs' summary text), ``custom_scalars.png``; all at 1600x1000;
- ``report.json``: what the pages showed, read from Chromium's DOM and TensorBoard's HTTP API: Time Series
  groups in order with their card counts and which are expanded; the run colours under the deep link; the
  HParams columns and, per run, which values are missing.

and prints the checks: the expanded groups are the story (the first one page of at most 12 cards), runs of one arm
share a colour and arms differ,
every run has every HParams column with one type. Exit code 1 when a check fails.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from marl_stability.core.tb_run import tensorboard_link
from marl_stability.runs.trials import first_agent
from marl_stability.errors import ArgumentParser

WIDTH, HEIGHT = 1600, 1000  # the screen a user is assumed to have
STORY_GROUPS = ("Story", "eval")
PAGE_CARDS = 12  # TensorBoard pages a group at 12 cards


def _wait(url: str, seconds: float = 60.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: TensorBoard did not answer at {url}")


def _chromium(browser: str, url: str, *args: str, height: int = 0) -> str:
    out = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--window-size={WIDTH},{height or HEIGHT}", "--virtual-time-budget=20000", *args, url],
                         check=True, capture_output=True, timeout=180, text=True)
    return out.stdout


class _DevTools:
    """The few Chrome DevTools Protocol calls a click needs, over a minimal websocket (standard library only)."""

    def __init__(self, ws_url: str) -> None:
        hostport, path = ws_url.removeprefix("ws://").split("/", 1)
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=120)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the websocket: {head.splitlines()[0]!r}")
        self.buf, self.n = head.split(b"\r\n\r\n", 1)[1], 0

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _message(self) -> dict[str, Any]:
        payload = b""
        while True:
            b0, b1 = self._read(2)
            size = b1 & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else b""
            data = self._read(size)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if mask else data
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the connection")
            if opcode in (0x9, 0xA):  # ping / pong: not part of a message
                continue
            payload += data
            if b0 & 0x80:
                return json.loads(payload)

    def close(self) -> None:
        self.sock.close()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        data = json.dumps({"id": self.n, "method": method, "params": params}).encode()
        size = len(data)
        head = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size)
                                if size < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", size))
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while True:
            msg = self._message()
            if msg.get("id") == self.n:
                return msg.get("result", {})


# Finds an element through every shadow root (TensorBoard's HParams dashboard is Polymer) and clicks it (its input or
# button when it has one: a Material checkbox toggles on its input).
_CLICK_JS = """(() => { const stack = [document.documentElement];
  while (stack.length) { const n = stack.pop();
    if (n.tagName === %s && n.textContent.trim().toUpperCase().includes(%s)) {
      const inner = n.querySelector && n.querySelector("input, button"); (inner || n).click(); return true; }
    if (n.shadowRoot) stack.push(...n.shadowRoot.children); stack.push(...(n.children || [])); }
  return false; })()"""


def _shot(browser: str, url: str, path: Path, port: int, click: Optional[tuple[str, str]] = None) -> bool:
    """Open ``url`` in a 1600x1000 viewport, let TensorBoard load and draw (real time: its charts draw in a worker,
    which a virtual-time screenshot races), click the first ``click[0]`` element whose text holds ``click[1]``
    (e.g. a tab or a settings checkbox), screenshot. Returns whether there was something to click."""
    proc = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             f"--window-size={WIDTH},{HEIGHT}", f"--remote-debugging-port={port}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"http://127.0.0.1:{port}/json")
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json").read())
        tools = _DevTools(next(p for p in pages if p.get("type") == "page")["webSocketDebuggerUrl"])
        tools.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        tools.call("Page.navigate", url=url)
        time.sleep(15)
        found = False
        if click is not None:
            expression = _CLICK_JS % (json.dumps(click[0].upper()), json.dumps(click[1].upper()))
            found = bool(tools.call("Runtime.evaluate", expression=expression, returnByValue=True)
                         .get("result", {}).get("value", False))
            time.sleep(6)
        path.write_bytes(base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"]))
        tools.close()
        return found
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def timeseries_groups(dom: str) -> list[dict[str, Any]]:
    """Time Series groups in page order: name, card count, expanded (TensorBoard's group toolbar)."""
    groups = []
    starts = [m for m in re.finditer(r'class="group-title" title="([^"]+)"', dom)]
    # Each group's toolbar is read on its own slice of the page: a toolbar without a card count (TensorBoard
    # leaves it out for some groups) must not borrow the next group's.
    for m, nxt in zip(starts, starts[1:] + [None]):
        part = dom[m.end(): nxt.start() if nxt is not None else len(dom)]
        count = re.search(r"group-card-count[^>]*>\s*(\d+) cards?", part)
        icon = re.search(r'svgicon="(expand_less|expand_more)_24px"', part)
        groups.append({"group": m.group(1), "cards": int(count.group(1)) if count else None,
                       "expanded": bool(icon) and icon.group(1) == "expand_less"})
    return groups


def run_colours(dom: str) -> dict[str, str]:
    """Run name -> the colour of its swatch in the run selector table."""
    pattern = r'data-id="[^"/]*/([^"]+)".{0,4000}?run-color-swatch" style="background(?:-color)?:\s*(rgb\([^)]*\))'
    return {run: colour for run, colour in re.findall(pattern, dom, re.S)}


def _post(base: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def hparams_table(base: str) -> dict[str, Any]:
    """The HParams plugin's experiment and one session group per run, from its HTTP API (what the table and
    the parallel-coordinates view are drawn from): columns with their types, missing values per run."""
    exp = _post(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = exp.get("hparamInfos", [])
    cols = [{"hparam": i["name"]} for i in infos] + [{"metric": m["name"]} for m in exp.get("metricInfos", [])]
    groups = _post(base, "/data/plugin/hparams/session_groups",
                   {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                              "STATUS_RUNNING"],
                    "colParams": cols, "startIndex": 0, "sliceSize": 10000})
    missing: dict[str, list[str]] = {}
    for g in groups.get("sessionGroups", []):
        have = g.get("hparams", {})
        missing[g["name"]] = [i["name"] for i in infos if i["name"] not in have]
    return {"columns": {i["name"]: i.get("type", "") for i in infos}, "sessions": len(missing), "missing": missing}


def _checks(report: dict[str, Any]) -> list[tuple[bool, str]]:
    groups = report["timeseries_groups"]
    expanded = [g["group"] for g in groups if g["expanded"]]
    out = [(tuple(expanded) == STORY_GROUPS, f"expanded Time Series groups {expanded} (want {list(STORY_GROUPS)}); "
            f"{sum(g['cards'] or 0 for g in groups if g['expanded'])} cards open, {len(groups)} groups")]
    first = groups[0] if groups else {"group": None, "cards": None}
    out.append((first["group"] == STORY_GROUPS[0] and (first["cards"] or 0) <= PAGE_CARDS,
                f"first group {first['group']!r} holds {first['cards']} cards (at most {PAGE_CARDS}: one page)"))
    by_arm: dict[str, set[str]] = defaultdict(set)
    for run, colour in report["run_colours"].items():
        by_arm[run.split("/")[0]].add(colour)
    if len(by_arm) > 1:
        one_each = all(len(c) == 1 for c in by_arm.values())
        distinct = len({next(iter(c)) for c in by_arm.values()}) == len(by_arm)
        out.append((one_each and distinct, f"run colours per arm under the deep link: "
                    f"{ {a: sorted(c) for a, c in by_arm.items()} }"))
    hp = report["hparams"]
    holes = {run: cols for run, cols in hp["missing"].items() if cols}
    out.append((hp["sessions"] == report["runs"] and not holes,
                f"HParams: {hp['sessions']} of {report['runs']} runs, {len(hp['columns'])} columns, runs with missing "
                f"values: {holes or 'none'}"))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logdir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("tb_screens"))
    ap.add_argument("--port", type=int, default=6123)
    args = ap.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("error: no chromium on PATH (apt-get install chromium)")
    if not args.logdir.is_dir():
        raise SystemExit(f"error: not a directory: {args.logdir}")
    args.out.mkdir(parents=True, exist_ok=True)
    base = f"http://localhost:{args.port}"
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir), "--port",
                           str(args.port), "--host=localhost"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"{base}/data/runs")
        time.sleep(3)  # let it load the event files
        runs = json.loads(urllib.request.urlopen(f"{base}/data/runs").read())
        link = tensorboard_link(first_agent(args.logdir), args.port)
        report: dict[str, Any] = {"runs": len(runs), "deep_link": link}
        report["timeseries_groups"] = timeseries_groups(_chromium(browser, f"{base}/#timeseries", "--dump-dom"))
        port = args.port + 1
        _shot(browser, f"{base}/#timeseries", args.out / "timeseries.png", port)
        report["outliers_unticked"] = _shot(browser, f"{base}/#timeseries", args.out / "timeseries_all_points.png",
                                            port, ("mat-checkbox", "ignore outliers"))
        report["run_colours"] = run_colours(_chromium(browser, link, "--dump-dom"))
        _shot(browser, link, args.out / "story.png", port)
        report["hparams"] = hparams_table(base)
        for page in ("hparams", "text", "custom_scalars"):
            _shot(browser, f"{base}/#{page}", args.out / f"{page}.png", port)
        report["parallel_coordinates"] = _shot(browser, f"{base}/#hparams", args.out / "hparams_parallel.png", port,
                                               ("paper-tab", "parallel coordinates"))
        checks = _checks(report)
        report["checks"] = [{"ok": ok, "what": what} for ok, what in checks]
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        for ok, what in checks:
            print(f"{'ok  ' if ok else 'FAIL'} {what}")
        print(f"screenshots and report.json in {args.out}")
    finally:
        tb.terminate()
        tb.wait(timeout=10)
    if not all(ok for ok, _ in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()

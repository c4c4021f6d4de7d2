"""Look at what a user sees: start TensorBoard on a log directory and screenshot its dashboards with
headless Chromium (Debian's ``chromium`` package: ``apt-get install chromium``).

    python -m marl_stability.tb_screenshot LOGDIR [--out DIR] [--port 6123]

Writes ``timeseries.png`` (the first screen of the Time Series tab), ``scalars_<i>.png`` (the Scalars tab
filtered to gradient norms, evaluation action statistics and the critics' Q and twin gap) and
``custom_scalars.png``,
and prints TensorBoard's own count of scalar tags per run (from its HTTP data API) so a change in what is
logged shows up as a number too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

FILTERS = ("grad_norm/", "eval/saturation|eval/repeat_rate|eval/sensitivity", "q/twin_gap|q/mean")


def _wait(url: str, seconds: float = 60.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: TensorBoard did not answer at {url}")


def _shot(browser: str, url: str, path: Path) -> None:
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--screenshot={path}", "--window-size=1600,1200", "--virtual-time-budget=20000", url],
                   check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
                           str(args.port), "--host=localhost"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"{base}/data/runs")
        time.sleep(3)  # let it load the event files
        tags = json.loads(urllib.request.urlopen(f"{base}/data/plugin/scalars/tags").read())
        for run, run_tags in sorted(tags.items()):
            print(f"{run}: {len(run_tags)} scalar tags")
        _shot(browser, f"{base}/#timeseries", args.out / "timeseries.png")
        for i, flt in enumerate(FILTERS):
            _shot(browser, f"{base}/#scalars&tagFilter={urllib.parse.quote(flt)}", args.out / f"scalars_{i}.png")
        _shot(browser, f"{base}/#custom_scalars", args.out / "custom_scalars.png")
        print(f"screenshots in {args.out}")
    finally:
        tb.terminate()
        tb.wait(timeout=10)


if __name__ == "__main__":
    main()

"""Render a run's HTML report in headless Chromium and save a screenshot, to check that it displays.

    python scripts/screenshot_report.py runs/demo/report/index.html report.png [--height 2400]

Chromium runs with networking features off and a throwaway profile, so the screenshot shows only what the
page itself holds (the report must be self-contained). Exit code 0 when the PNG was written, 2 when no
Chromium is installed (Debian: `apt-get install chromium`), 1 when it failed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: Path, output: Path, *, width: int = 1280, height: int = 2400, timeout: float = 120) -> Path:
    """Write a PNG screenshot of `page` to `output`; raises RuntimeError if Chromium is missing or fails."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("no Chromium found (tried: " + ", ".join(BROWSERS) + ")")
    page, output = Path(page).resolve(), Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="zirelia-chromium-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={output}",
            f"--window-size={width},{height}",
            page.as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if not output.is_file() or output.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot a zirelia-local HTML report with headless Chromium.")
    parser.add_argument("page", type=Path, help="the report, e.g. runs/demo/report/index.html")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(f"no such file: {args.page}", file=sys.stderr)
        return 1
    if find_chromium() is None:
        print("no Chromium installed (Debian/Ubuntu: apt-get install chromium)", file=sys.stderr)
        return 2
    try:
        path = screenshot(args.page, args.output, width=args.width, height=args.height)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"screenshot failed: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

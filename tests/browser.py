"""Open a page in a real headless browser (Debian's chromium): its DOM after load, its console, a screenshot.

A probe script is added to a copy of the page (the page itself has no script) and writes, on load, how many
images decoded into ``<body data-images-ok="n/m">``. Console messages (script errors, failed loads) come
from ``--enable-logging=stderr --v=0``, which prints each as an ``INFO:CONSOLE`` line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots kept for a person to look at (git-ignored)
PROBE = ("<script>window.addEventListener('load', () => { const all = [...document.images];"
         " const ok = all.filter(i => i.complete && i.naturalWidth > 0);"
         " document.body.setAttribute('data-images-ok', ok.length + '/' + all.length); });</script>")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and Path("/usr/bin/chromium").is_file():
        found = "/usr/bin/chromium"
    if not found:
        pytest.skip("no chromium on PATH: `make test` installs Debian's chromium when run as root "
                    "(apt-get install chromium)")
    return found


@dataclass
class Rendered:
    dom: str
    console: list[str]
    images_ok: int
    images: int
    screenshot: Path


def render(page: Path, screenshot_name: str, width: int = 1200, height: int = 2400) -> Rendered:
    probed = page.with_name(page.stem + ".probe.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / screenshot_name
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--enable-logging=stderr", "--v=0", f"--window-size={width},{height}", "--dump-dom",
           f"--screenshot={shot}", probed.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'data-images-ok="(\d+)/(\d+)"', proc.stdout)
    assert found, "the page did not finish loading (no probe result in the DOM)"
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return Rendered(proc.stdout, console, int(found.group(1)), int(found.group(2)), shot)

"""Fixtures for browser tests: a real SFU server and real headless browser pages.

Every process started here runs in its own process group and is ended by that group
(SIGTERM, then SIGKILL) when the fixture finishes, whether the test passed or not.
Chromium is the system browser (/usr/bin/chromium), launched by us with the flags
from /work/shared/TESTING.md and driven by Playwright over the DevTools protocol on
loopback. Firefox is Debian's firefox-esr, driven by puppeteer-core over WebDriver
BiDi (`firefox.py`); its page object offers the part of Playwright's API the tests
use, so a test body can run on either engine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"

# Browser tests share helpers with the integration tests (`tests.integration.shaping`):
# make the repository importable however pytest was started.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from loadtest.server import ServerProcess
from tests.browser.firefox import FirefoxPage, check_firefox
from tests.netns import Namespace, end_browser, network_fixture  # noqa: F401  (the `network` fixture)

# Flags a headless WebRTC participant needs on this machine (TESTING.md).
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    # Background tabs must keep decoding at full rate.
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
]

SERVER_START_TIMEOUT = 30.0
CHROMIUM_START_TIMEOUT = 15.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end_process_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group led by `proc`, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    # Children (e.g. Chromium's renderers) may outlive the leader: kill what is left.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="session")
def sfu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run `signaling.cli serve` on a free loopback port; yield its base URL.

    The server's output goes to `server.log` in this session's pytest temp directory.
    """
    port = _free_port()
    log_path = tmp_path_factory.mktemp("sfu-server") / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        # Two workers behind the front, as `sfu serve` runs on a 2-core machine by default.
        [sys.executable, "-m", "signaling.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{base_url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after {SERVER_START_TIMEOUT} s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base_url
    finally:
        _end_process_group(proc)
        log.close()


class BrowserPage:
    """One participant: a browser process of its own and the page it shows.

    ``page`` is a Playwright ``Page`` for Chromium, a :class:`FirefoxPage` (the same
    ``evaluate``/``wait_for_function``/``goto`` calls) for Firefox; ``engine`` says which.
    """

    def __init__(self, page: Page | FirefoxPage, label: str, engine: str = "chromium", console: list[str] | None = None) -> None:
        self.page = page
        self.label = label
        self.engine = engine
        self.console: list[str] = console if console is not None else []
        if engine == "chromium":
            page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda err: self.console.append(f"pageerror: {err}"))

    def log(self) -> str:
        """The page's console output so far, for assertion messages."""
        return f"--- console of {self.label} ---\n" + "\n".join(self.console[-50:])


def _launch_chromium(user_data_dir: str, args: Sequence[str] = ()) -> subprocess.Popen:
    """Start Chromium in a new process group with DevTools on a loopback port."""
    return subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, *args, f"--user-data-dir={user_data_dir}",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def _devtools_port(proc: subprocess.Popen, user_data_dir: str) -> int:
    """Wait for Chromium to write the DevTools port it picked into its profile."""
    port_file = Path(user_data_dir, "DevToolsActivePort")
    deadline = time.monotonic() + CHROMIUM_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if port_file.exists():
            first_line = port_file.read_text().split("\n", 1)[0]
            if first_line.isdigit():
                return int(first_line)
        await asyncio.sleep(0.1)
    raise RuntimeError("chromium did not open its DevTools port")


OpenPage = Callable[..., Awaitable[BrowserPage]]


@pytest.fixture
async def open_page() -> AsyncIterator[OpenPage]:
    """Factory: `await open_page(url, label, engine="chromium", init_script=None,
    netns=None, args=())` starts a fresh browser (`chromium` or `firefox`) and opens
    `url`; Chromium runs `init_script` in the page before the page's own scripts, takes
    the extra command-line `args`, and runs inside the network namespace `netns`
    (a `tests.netns.Namespace`) when one is given."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is not installed (.ci/run installs the Debian package chromium)")
    processes: list[tuple[subprocess.Popen, str]] = []
    pid_files: list[Path] = []
    dirs: list[str] = []
    browsers: list[Browser] = []
    firefoxes: list[FirefoxPage] = []
    async with async_playwright() as playwright:

        async def _open(
            url: str,
            label: str,
            engine: str = "chromium",
            init_script: str | None = None,
            *,
            netns: Namespace | None = None,
            args: Sequence[str] = (),
        ) -> BrowserPage:
            if engine == "firefox":
                missing = check_firefox()
                if missing:
                    pytest.fail(missing)
                console: list[str] = []
                firefox = await FirefoxPage.launch(console)
                firefoxes.append(firefox)
                participant = BrowserPage(firefox, label, engine, console)
                await firefox.goto(url)
                return participant
            if engine != "chromium":
                raise ValueError(f"unknown engine {engine}")
            user_data_dir = tempfile.mkdtemp(prefix=f"chromium-{label}-")
            if netns is not None:
                # Inside a network namespace: Playwright starts it through a wrapper
                # (`ip netns exec`) and talks to it over a pipe, not a loopback port.
                wrapper, pid_file = netns.chromium_wrapper(Path(user_data_dir))
                pid_files.append(pid_file)
                dirs.append(user_data_dir)
                browser = await playwright.chromium.launch(
                    executable_path=str(wrapper), headless=False, chromium_sandbox=False,
                    args=[*CHROMIUM_FLAGS, *args], timeout=CHROMIUM_START_TIMEOUT * 1000,
                )
                browsers.append(browser)
                page = await (await browser.new_context()).new_page()
            else:
                proc = _launch_chromium(user_data_dir, args)
                processes.append((proc, user_data_dir))
                port = await _devtools_port(proc, user_data_dir)
                browser = await playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
                browsers.append(browser)
                context = browser.contexts[0]
                page = context.pages[0] if context.pages else await context.new_page()
            participant = BrowserPage(page, label)
            if init_script is not None:  # runs in the page before its own scripts
                await page.add_init_script(init_script)
            await page.goto(url)
            return participant

        try:
            yield _open
        finally:
            await asyncio.gather(*(firefox.close() for firefox in firefoxes), return_exceptions=True)
            for browser in browsers:
                try:
                    await asyncio.wait_for(browser.close(), timeout=5)
                except Exception:  # the process group is killed below in any case
                    pass
            for proc, user_data_dir in processes:
                _end_process_group(proc)
                shutil.rmtree(user_data_dir, ignore_errors=True)
            for pid_file in pid_files:  # browsers in a namespace, by their pid
                end_browser(pid_file)
            for user_data_dir in dirs:
                shutil.rmtree(user_data_dir, ignore_errors=True)


@pytest.fixture
def tc_available() -> None:
    """Shaping needs root, `tc`, and no other shaping on `lo` (another test run)."""
    if os.geteuid() != 0 or shutil.which("tc") is None:
        pytest.fail("shaping the loopback link needs root and tc (iproute2; .ci/run installs it)")
    qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout
    if "htb" in qdiscs:
        pytest.fail(f"lo is shaped already (another test run?); not touching it:\n{qdiscs}")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers a test starts itself (e.g. inside its namespaces): append them; each is
    stopped by its pid at teardown and the end of its log printed."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for server in started:
            code = server.stop()
            print(f"--- server pid {server.pid} exited {code}; log tail ---\n{server.log_tail()}")

"""Debian's firefox-esr as a test participant, with the subset of Playwright's ``Page``
API the browser tests use, so one test body can drive either engine.

Playwright cannot drive a stock Firefox (it needs its own patched build, and nothing
may be downloaded at test time); puppeteer-core can, over WebDriver BiDi. Each
:class:`FirefoxPage` is one ``node js/firefox-driver.mjs`` process (one browser, one
page) in a process group of its own, spoken to in JSON lines over its stdin/stdout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from playwright.async_api import TimeoutError as PlaywrightTimeoutError

__all__ = ["FIREFOX", "JS_DIR", "FirefoxPage", "check_firefox"]

FIREFOX = os.environ.get("SFU_TEST_FIREFOX", "/usr/bin/firefox-esr")
JS_DIR = Path(__file__).resolve().parent / "js"
DRIVER = JS_DIR / "firefox-driver.mjs"
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 60.0


def check_firefox() -> str | None:
    """Why Firefox tests cannot run here (None when they can): the reason names what
    `.ci/run` installs."""
    if not os.access(FIREFOX, os.X_OK):
        return f"{FIREFOX} is not installed (.ci/run installs the Debian package firefox-esr)"
    if shutil.which("node") is None:
        return "node is not installed (.ci/run installs the Debian package nodejs)"
    if not (JS_DIR / "node_modules" / "puppeteer-core").is_dir():
        return f"puppeteer-core is not installed in {JS_DIR} (make test runs npm ci there)"
    return None


class _Value:
    """What :meth:`FirefoxPage.wait_for_function` returns (Playwright's ``JSHandle``
    subset: ``json_value()``)."""

    def __init__(self, value: Any) -> None:
        self._value = value

    async def json_value(self) -> Any:
        return self._value


class FirefoxPage:
    """One headless Firefox with one page. Create with :meth:`launch`; end with
    :meth:`close` (which also kills the whole process group)."""

    def __init__(self, process: asyncio.subprocess.Process, console: list[str]) -> None:
        self._process = process
        self._console = console
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.ensure_future(self._read())
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._browser_pid: int | None = None

    @classmethod
    async def launch(cls, console: list[str]) -> FirefoxPage:
        """Start the driver and its Firefox; page console lines go to ``console``.

        Raises:
            RuntimeError: Firefox did not start within ``START_TIMEOUT_S``.
        """
        process = await asyncio.create_subprocess_exec(
            "node", str(DRIVER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=JS_DIR,
            start_new_session=True,
            limit=16 * 1024 * 1024,
        )
        page = cls(process, console)
        try:
            await asyncio.wait_for(asyncio.shield(page._ready), START_TIMEOUT_S)
        except (asyncio.TimeoutError, RuntimeError) as exc:
            await page.close()
            raise RuntimeError(f"firefox did not start: {exc}\n" + "\n".join(console[-20:])) from exc
        return page

    async def _read(self) -> None:
        assert self._process.stdout is not None
        try:
            async for raw in self._process.stdout:
                line = raw.decode(errors="replace").strip()
                try:
                    message = json.loads(line)
                except ValueError:
                    self._console.append(f"driver: {line}")  # node's own output (errors)
                    continue
                if message.get("event") == "ready":
                    self._browser_pid = message.get("browserPid")
                    if not self._ready.done():
                        self._ready.set_result(None)
                elif message.get("event") == "console":
                    self._console.append(message["text"])
                elif (future := self._pending.pop(message.get("id"), None)) is not None and not future.done():
                    if message.get("ok"):
                        future.set_result(message.get("value"))
                    else:
                        future.set_exception(RuntimeError(f"firefox: {message.get('error')}"))
        finally:
            error = RuntimeError("the firefox driver exited")
            if not self._ready.done():
                self._ready.set_exception(error)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    async def _call(self, op: str, timeout: float = CALL_TIMEOUT_S, **fields: Any) -> Any:
        if self._process.returncode is not None or self._process.stdin is None:
            raise RuntimeError("the firefox driver has exited")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._process.stdin.write(json.dumps({"id": request_id, "op": op, **fields}).encode() + b"\n")
        await self._process.stdin.drain()
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)

    async def goto(self, url: str) -> None:
        """Load ``url`` and wait for its ``load`` event."""
        await self._call("goto", url=url)

    async def evaluate(self, source: str, arg: Any = None) -> Any:
        """Evaluate ``source`` in the page: a function is called with ``arg`` and
        awaited; the result comes back through JSON."""
        return await self._call("evaluate", source=source, arg=arg)

    async def wait_for_function(
        self, source: str, arg: Any = None, timeout: float = 30_000, polling: float = 100
    ) -> _Value:
        """Poll ``source`` (ms ``timeout`` and ``polling``) until it returns a truthy
        value; return it.

        Raises:
            playwright's ``TimeoutError``: not truthy within ``timeout`` ms.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout / 1000.0
        while True:
            value = await self.evaluate(source, arg)
            if value:
                return _Value(value)
            if loop.time() > deadline:
                raise PlaywrightTimeoutError(f"firefox: not truthy within {timeout} ms: {source}")
            await asyncio.sleep(polling / 1000.0)

    async def close(self) -> None:
        """Close the browser, then end the driver's process group and Firefox's
        (puppeteer starts Firefox detached, in a group of its own). Idempotent."""
        process = self._process
        if process.returncode is None:
            try:
                await self._call("close", timeout=10.0)
            except Exception:  # the groups are killed below in any case
                pass
        if self._browser_pid is not None:
            try:
                os.killpg(self._browser_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                await asyncio.wait_for(process.wait(), 5.0)
                # Firefox's content processes may outlive the driver: kill the rest.
                os.killpg(process.pid, signal.SIGKILL)
            except (asyncio.TimeoutError, ProcessLookupError):
                continue
            break
        self._reader.cancel()

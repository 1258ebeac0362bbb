"""The ``sfu serve`` command: environment defaults and HTTPS/WSS with --tls-cert/--tls-key."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loadtest.server import REPO_ROOT, ServerProcess, free_port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_tls_serves_https_and_wss(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server.log", tls=self_signed(tmp_path))
    try:
        server.wait_healthy(30)
        async with aiohttp.ClientSession() as session:
            async with session.get(server.http_url + "/", ssl=False) as page:
                assert page.status == 200
                assert "app.js" in await page.text()
            async with session.ws_connect(server.ws_url, ssl=False) as ws:
                await ws.send_json({"type": "join", "room": "tls", "name": "Secure"})
                joined = await ws.receive_json(timeout=10)
                assert joined["type"] == "joined" and joined["room"] == "tls"
            # Plain HTTP on the TLS port does not serve the app.
            try:
                async with session.get(f"http://127.0.0.1:{server.port}/healthz") as plain:
                    assert plain.status != 200
            except aiohttp.ClientError:
                pass
    finally:
        server.stop()


def test_environment_sets_host_and_port(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SFU_HOST": "127.0.0.1", "SFU_PORT": str(port)}
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "signaling.cli", "serve"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    body = json.loads(response.read())
                    break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        assert body is not None
        assert (body["status"], body["rooms"], body["participants"]) == ("ok", 0, 0)
        cores = os.cpu_count() or 1  # the default: one worker per core behind a front
        assert len(body.get("workers", [])) == (cores if cores > 1 else 0), body
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_tls_flags_must_come_together() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "signaling.cli", "serve", "--tls-cert", "x.pem"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "--tls-cert and --tls-key go together" in result.stderr

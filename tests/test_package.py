"""The package as a user installs it: one version, the typing marker, the license, the extras named when
missing, and the local S3 server serving until a signal."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import boto3

import tiercache

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_and_the_package_metadata():
    assert importlib.metadata.version("tiercache") == tiercache.__version__
    meta = importlib.metadata.metadata("tiercache")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Typing :: Typed" in meta.get_all("Classifier")
    assert {"devserver", "demo", "test"} <= set(meta.get_all("Provides-Extra"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]


def test_typing_marker_and_license_ship():
    assert importlib.resources.files("tiercache").joinpath("py.typed").is_file()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def _without(module: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``module`` cannot be imported (as after a plain install)."""
    script = f"import sys; sys.modules[{module!r}] = None\n{code}"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_a_missing_extra_is_one_line_naming_it():
    proc = _without("moto", "from tiercache.devserver import main; sys.exit(main([]))")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "tiercache.devserver: error: moto is not installed; install it with: pip install 'tiercache[devserver]'"]
    proc = _without("torch", "from tiercache.demo import main; sys.exit(main([]))")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "demo: error: torch is not installed; install it with: pip install 'tiercache[demo]'"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_devserver_serves_with_stdin_closed_until_sigterm_on_the_port_asked():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tiercache.devserver", "--port", str(port), "--bucket",
                             "made-at-start"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = proc.stdout.readline().strip()
        assert endpoint == f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.put_object(Bucket="made-at-start", Key="k", Body=b"v")  # still serving after stdin's EOF
        assert client.get_object(Bucket="made-at-start", Key="k")["Body"].read() == b"v"
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_devserver_bad_port_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "tiercache.devserver", "--port", "70000"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "70000" in proc.stderr

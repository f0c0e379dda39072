"""Takes the README's picture of JupyterLab on capstan's gateway (docs/img/jupyterlab.png).

    JUPYTERLAB_PYTHON scripts/jupyterlab-screenshot.py GATEWAY_URL CAPSTAN_TOKEN KERNELSPEC OUT.png

Run with the interpreter of a venv that has `jupyterlab`, against a running daemon whose home
has a code environment with `with_jupyter` and the sample's `wine` dataset imported. It starts
`jupyter lab --gateway-url GATEWAY_URL`, creates a notebook, runs its cells on a kernel of
KERNELSPEC through JupyterLab's own session API (so the outputs are what the kernel printed,
wherever it ran), saves them, and has headless Chromium (`chromium`, from Debian) take the
picture of the notebook open in JupyterLab with its kernel attached.
"""

import asyncio
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

GATEWAY, CAPSTAN_TOKEN, SPEC, OUT = sys.argv[1:5]
TOKEN = uuid.uuid4().hex
CELLS = [
    "import capstan, platform\n"
    "print(f\"running on {capstan.context()['exec_config']}, in {platform.node()}\")",
    "wine = capstan.Dataset(\"wine\").to_pandas()\n"
    "wine.groupby(\"cultivar\")[[\"alcohol\", \"color_intensity\"]].mean().round(2)",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def call(base, method, path, body=None):
    resp = await AsyncHTTPClient().fetch(HTTPRequest(
        base + path, method=method, body=None if body is None else json.dumps(body),
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
        allow_nonstandard_methods=True, request_timeout=600), raise_error=True)
    return json.loads(resp.body) if resp.body else None


async def execute(ws, session, code):
    msg_id = uuid.uuid4().hex
    await ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "readme", "session": session,
                   "msg_type": "execute_request", "version": "5.3",
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    outputs, count, idle, replied = [], None, False, False
    while not (idle and replied):
        m = json.loads(await ws.read_message())
        if m.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, c = m["header"]["msg_type"], m["content"]
        if kind == "stream":
            outputs.append({"output_type": "stream", "name": c["name"], "text": c["text"]})
        elif kind == "execute_result":
            outputs.append({"output_type": "execute_result", "data": c["data"],
                            "metadata": c.get("metadata", {}), "execution_count": c["execution_count"]})
        elif kind == "error":
            outputs.append({"output_type": "error", "ename": c["ename"], "evalue": c["evalue"],
                            "traceback": c["traceback"]})
        elif kind == "execute_reply":
            count, replied = c.get("execution_count"), True
        elif kind == "status" and c["execution_state"] == "idle":
            idle = True
    return count, outputs


async def main():
    root = tempfile.mkdtemp(prefix="capstan-jupyterlab-")
    logs = tempfile.mkdtemp(prefix="capstan-jupyterlab-logs-")
    # Settings of its own: no news pop-up in the picture.
    settings = os.path.join(logs, "settings")
    os.makedirs(os.path.join(settings, "@jupyterlab/apputils-extension"))
    with open(os.path.join(settings, "@jupyterlab/apputils-extension/notification.jupyterlab-settings"), "w") as f:
        json.dump({"fetchNews": "false", "checkForUpdates": False}, f)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.allow_root=True",
         f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
         f"--IdentityProvider.token={TOKEN}", f"--gateway-url={GATEWAY}",
         f"--GatewayClient.auth_token={CAPSTAN_TOKEN}", "--GatewayClient.request_timeout=600"],
        stdout=open(os.path.join(logs, "lab.log"), "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "JUPYTERLAB_SETTINGS_DIR": settings})
    try:
        for _ in range(300):
            try:
                await call(base, "GET", "/api/status")
                break
            except Exception:
                await asyncio.sleep(0.2)
        path = "wine.ipynb"
        cells = [{"cell_type": "code", "source": c, "metadata": {}, "outputs": [],
                  "execution_count": None} for c in CELLS]
        specs = await call(base, "GET", "/api/kernelspecs")
        spec = specs["kernelspecs"][SPEC]["spec"]
        nb = {"nbformat": 4, "nbformat_minor": 5, "cells": cells, "metadata": {
            "kernelspec": {"name": SPEC, "display_name": spec["display_name"], "language": "python"}}}
        await call(base, "PUT", f"/api/contents/{path}", {"type": "notebook", "content": nb})
        sess = await call(base, "POST", "/api/sessions",
                          {"path": path, "type": "notebook", "name": path, "kernel": {"name": SPEC}})
        kid = sess["kernel"]["id"]
        session = uuid.uuid4().hex
        ws = await websocket_connect(HTTPRequest(
            base.replace("http", "ws") + f"/api/kernels/{kid}/channels?session_id={session}",
            headers={"Authorization": f"token {TOKEN}"}))
        for cell in cells:
            cell["execution_count"], cell["outputs"] = await execute(ws, session, cell["source"])
        ws.close()
        await call(base, "PUT", f"/api/contents/{path}", {"type": "notebook", "content": nb})
        # The notebook open in JupyterLab, its kernel attached (the session above).
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
             "--hide-scrollbars", "--window-size=1280,720", "--virtual-time-budget=30000",
             f"--screenshot={OUT}", f"{base}/lab/tree/{path}?token={TOKEN}&reset"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await call(base, "DELETE", f"/api/sessions/{sess['id']}")
        print(f"{OUT}: JupyterLab with {path} on {SPEC}")
    finally:
        lab.terminate()
        lab.wait(10)


asyncio.run(main())

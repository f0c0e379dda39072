"""A user's session with a stock Jupyter Server on capstan's gateway, as the kernel tests run it.

    python jupyter_client.py GATEWAY_URL CAPSTAN_TOKEN KERNELSPEC WORK_DIR
    python jupyter_client.py --direct GATEWAY_URL CAPSTAN_TOKEN KERNEL_ID CODE
    python jupyter_client.py --first-reply GATEWAY_URL CAPSTAN_TOKEN KERNELSPEC CODE

Starts `jupyter server --gateway-url GATEWAY_URL --GatewayClient.auth_token CAPSTAN_TOKEN` on a
free port, then talks to **Jupyter Server's** own REST and WebSocket API only (as JupyterLab
does): lists the kernelspecs, starts a kernel of KERNELSPEC, executes code, reads a dataset,
interrupts a busy loop, restarts, and deletes the kernel. Prints one JSON object per step on
stdout; the Rust test asserts on them. Exits non-zero on the first step that fails.
"""

import asyncio
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import uuid

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

DIRECT = sys.argv[1] in ("--direct", "--first-reply")
GATEWAY, CAPSTAN_TOKEN, SPEC, WORK = sys.argv[1 + DIRECT:5 + DIRECT]
# Jupyter Server's own token for this session; `--direct` talks to the gateway itself, with
# the capstan token.
TOKEN = CAPSTAN_TOKEN if DIRECT else uuid.uuid4().hex
WAIT = 300

# What each step runs, in the kernelspec's language: the same checks in Python and in R.
CODE = {
    "python": {
        "execute": "print(6 * 7)",
        "dataset": "import capstan\nwine = capstan.Dataset('wine').to_pandas()\n"
                   "print(len(wine), capstan.context()['project'])",
        "file": "print(open('notes.txt', 'w').write('kept'))",
        "busy": "while True:\n    pass",
        "set": "x = 1",
        "get": "print(x)",
    },
    "R": {
        "execute": "cat(6 * 7, '\\n', sep = '')",
        "dataset": "wine <- capstan_dataset('wine')\n"
                   "cat(nrow(wine), ' ', Sys.getenv('CAPSTAN_PROJECT'), '\\n', sep = '')",
        "file": "writeLines('kept', 'notes.txt', sep = '')\ncat(file.size('notes.txt'), '\\n', sep = '')",
        "busy": "while (TRUE) {}",
        "set": "x <- 1",
        "get": "print(x)",
    },
}


def say(**step):
    print(json.dumps(step), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    def __init__(self, base):
        self.base = base
        self.http = AsyncHTTPClient()

    async def call(self, method, path, body=None):
        req = HTTPRequest(
            self.base + path,
            method=method,
            headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=WAIT,
        )
        resp = await self.http.fetch(req, raise_error=False)
        text = resp.body.decode() if resp.body else ""
        return resp.code, (json.loads(text) if text.strip() else None)


class Channels:
    """The kernel's WebSocket through Jupyter Server, in its JSON framing."""

    def __init__(self, ws):
        self.ws = ws
        self.session = uuid.uuid4().hex

    @classmethod
    async def open(cls, base, kernel_id):
        session = uuid.uuid4().hex
        url = base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels?session_id={session}"
        ws = await websocket_connect(
            HTTPRequest(url, headers={"Authorization": f"token {TOKEN}"})
        )
        c = cls(ws)
        c.session = session
        return c

    async def send(self, code):
        msg_id = uuid.uuid4().hex
        await self.ws.write_message(json.dumps({
            "header": {
                "msg_id": msg_id,
                "username": "test",
                "session": self.session,
                "msg_type": "execute_request",
                "version": "5.3",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            },
            "parent_header": {},
            "metadata": {},
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
            "channel": "shell",
            "buffers": [],
        }))
        return msg_id

    async def result(self, msg_id):
        """The reply to `msg_id` and what it printed, once the kernel is idle after it."""
        out, reply, idle = [], None, False
        deadline = time.monotonic() + WAIT
        while reply is None or not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to {msg_id} in {WAIT} s")
            text = await asyncio.wait_for(self.ws.read_message(), left)
            if text is None:
                raise ConnectionError("the kernel's WebSocket closed")
            m = json.loads(text)
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = m["header"]["msg_type"]
            if kind == "stream":
                out.append(m["content"]["text"])
            elif kind == "error":
                out.append(m["content"]["ename"])
            elif kind == "execute_reply":
                reply = m["content"]
            elif kind == "status" and m["content"]["execution_state"] == "idle":
                idle = True
        return reply, "".join(out)

    async def run(self, code):
        return await self.result(await self.send(code))


async def main():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.allow_root=True",
         f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={WORK}",
         f"--IdentityProvider.token={TOKEN}", f"--gateway-url={GATEWAY}",
         f"--GatewayClient.auth_token={CAPSTAN_TOKEN}", "--GatewayClient.request_timeout=600"],
        stdout=open(os.path.join(WORK, "jupyter-server.log"), "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        s = Session(base)
        deadline = time.monotonic() + 60
        while True:
            try:
                code, _ = await s.call("GET", "/api/status")
                if code == 200:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Jupyter Server did not start")
            await asyncio.sleep(0.2)

        code, specs = await s.call("GET", "/api/kernelspecs")
        listed = (specs or {}).get("kernelspecs", {})
        language = listed.get(SPEC, {}).get("spec", {}).get("language", "python")
        say(step="kernelspecs", status=code, names=sorted(listed), language=language,
            display=[k["spec"]["display_name"] for k in listed.values()])
        run = CODE[language]

        t0 = time.monotonic()
        code, kernel = await s.call("POST", "/api/kernels", {"name": SPEC})
        say(step="start", status=code, kernel=kernel, seconds=round(time.monotonic() - t0, 2))
        if code != 201:
            raise SystemExit(1)
        kid = kernel["id"]
        ch = await Channels.open(base, kid)

        t0 = time.monotonic()
        reply, out = await ch.run(run["execute"])
        say(step="execute", status=reply["status"], out=out, seconds=round(time.monotonic() - t0, 2))

        reply, out = await ch.run(run["dataset"])
        say(step="dataset", status=reply["status"], out=out)

        reply, out = await ch.run(run["file"])
        say(step="file", status=reply["status"], out=out)

        busy = await ch.send(run["busy"])
        await asyncio.sleep(0.5)  # let the loop begin: an interrupt before it would be a no-op
        code, _ = await s.call("POST", f"/api/kernels/{kid}/interrupt", {})
        reply, out = await ch.result(busy)
        say(step="interrupt", status=code, reply=reply["status"], ename=reply.get("ename"))

        reply, _ = await ch.run(run["set"])
        code, _ = await s.call("POST", f"/api/kernels/{kid}/restart", {})
        reply, out = await ch.run(run["get"])
        say(step="restart", status=code, reply=reply["status"], ename=reply.get("ename"),
            evalue=reply.get("evalue"))

        code, listed = await s.call("GET", "/api/kernels")
        say(step="list", status=code, ids=[k["id"] for k in listed or []])

        code, _ = await s.call("DELETE", f"/api/kernels/{kid}")
        say(step="delete", status=code, kernel=kid)
    finally:
        server.terminate()
        server.wait(10)


async def direct():
    """Runs CODE (WORK) on kernel SPEC through the gateway's own WebSocket: what it printed."""
    ch = await Channels.open(GATEWAY, SPEC)
    reply, out = await ch.run(WORK)
    say(step="direct", status=reply["status"], out=out)


async def first_reply():
    """Starts a kernel of SPEC on the gateway, runs CODE (WORK) and deletes the kernel: how long
    the start took, and the start to the first execute reply (the benchmark's number)."""
    s = Session(GATEWAY)
    t0 = time.monotonic()
    code, kernel = await s.call("POST", "/api/kernels", {"name": SPEC})
    if code != 201:
        raise SystemExit(f"start: {code} {kernel}")
    started = time.monotonic() - t0
    ch = await Channels.open(GATEWAY, kernel["id"])
    reply, out = await ch.run(WORK)
    first = time.monotonic() - t0
    await s.call("DELETE", f"/api/kernels/{kernel['id']}")
    say(step="first-reply", status=reply["status"], out=out, start=started, first_reply=first)


if sys.argv[1] == "--first-reply":
    asyncio.run(first_reply())
else:
    asyncio.run(direct() if DIRECT else main())

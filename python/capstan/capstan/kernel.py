"""The agent of a notebook kernel: what runs as a kernel's activity, wherever it runs.

It starts the kernel on loopback (jupyter_client's kernel manager: ipykernel, or IRkernel in an
R environment's image) and **dials out** to the
daemon over one WebSocket (`/api/v1/kernels/ID/agent`, authenticated by the activity's own
token), then relays: every message the kernel sends on its iopub, shell, stdin and control
channels goes to the daemon as Jupyter Server's JSON framing (the message with a `channel`
field), and every such frame from the daemon goes to the kernel's channel it names. No
connection into the container or pod is ever needed, and the daemon never speaks ZeroMQ.

Frames with a `capstan` field are the agent's own: the daemon asks `interrupt` and `restart`
(the kernel restarts in place, on the same ports), the agent answers `ready`, `interrupted`
and `restarted`. The daemon going away (a restart) is not the kernel's end: the agent dials
again, with backoff, and the kernel keeps its state meanwhile. The kernel ends when its
activity ends (deleted, culled or cancelled), which stops this process with it.
"""

import asyncio
import json
import os
import sys

# The channels a client may write to; the kernel answers on these and on iopub.
_CLIENT_CHANNELS = ("shell", "stdin", "control")
# How long the agent keeps dialling a daemon that went away before it gives up (and the
# kernel with it): a daemon restart takes seconds.
_REDIAL_FOR = 600.0


def _log(line):
    print(f"capstan kernel agent: {line}", file=sys.stderr, flush=True)


class Agent:
    def __init__(self, kernel_id, kernel_name):
        from jupyter_client.manager import AsyncKernelManager

        from capstan import _endpoint

        self.kernel_id = kernel_id
        self.url, self.token = _endpoint()
        # On loopback only: `python3` is this interpreter's own ipykernel, `ir` the kernelspec
        # Debian's r-cran-irkernel installs (/usr/share/jupyter/kernels/ir).
        self.km = AsyncKernelManager(kernel_name=kernel_name)
        self.km.ip = "127.0.0.1"
        self.sockets = {}
        self.ws = None
        self.restarting = False

    async def start(self):
        # The user's notebook folder where the placement keeps one (a Docker volume), so files
        # written with relative paths outlive the kernel.
        workdir = os.environ.get("CAPSTAN_KERNEL_WORKDIR")
        if workdir:
            os.makedirs(workdir, exist_ok=True)
        self.cwd = workdir or os.getcwd()
        await self.km.start_kernel(cwd=self.cwd)
        self._connect_channels()
        await self._wait_ready()
        _log("kernel started")

    async def _wait_ready(self):
        """Until the kernel answers (a client of its own asks kernel_info), so that the first
        request of a client, and the first after a restart, is not sent into the void."""
        kc = self.km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=120)
        finally:
            kc.stop_channels()

    def _connect_channels(self):
        self.sockets = {
            "shell": self.km.connect_shell(),
            "stdin": self.km.connect_stdin(),
            "control": self.km.connect_control(),
            "iopub": self.km.connect_iopub(),
        }

    async def _pump(self, channel):
        """The kernel's messages on `channel`, to the daemon."""
        from jupyter_client.jsonutil import json_default

        session = self.km.session
        sock = self.sockets[channel]
        while True:
            parts = await sock.recv_multipart()
            try:
                _, msg_list = session.feed_identities(parts)
                msg = session.deserialize(msg_list, content=True)
            except Exception as e:
                _log(f"dropped an unreadable {channel} message: {e}")
                continue
            msg.pop("buffers", None)
            msg["channel"] = channel
            await self._send(json.dumps(msg, default=json_default))

    async def _send(self, text):
        ws = self.ws
        if ws is None:
            return  # no daemon right now: the client missed it, as with a dropped socket
        try:
            await ws.write_message(text)
        except Exception:
            pass

    async def _handle(self, text):
        msg = json.loads(text)
        own = msg.get("capstan")
        if own == "interrupt":
            await self.km.interrupt_kernel()
            await self._send(json.dumps({"capstan": "interrupted"}))
        elif own == "restart":
            self.restarting = True
            try:
                # On the same ports and key: the agent's sockets reconnect by themselves (a
                # socket closed under a pending receive would never wake its reader).
                await self.km.restart_kernel(now=True)
                await self._wait_ready()
            finally:
                self.restarting = False
            await self._send(json.dumps({"capstan": "restarted"}))
        elif own is None:
            channel = msg.pop("channel", None)
            if channel not in _CLIENT_CHANNELS:
                _log(f"dropped a message for channel {channel!r}")
                return
            self.km.session.send(self.sockets[channel], msg)

    async def _dial(self):
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        request = HTTPRequest(
            f"{ws_url}/api/v1/kernels/{self.kernel_id}/agent",
            headers={"Authorization": f"Bearer {self.token}"},
            connect_timeout=10,
            # Trust the system's CA bundle (a daemon behind a corporate CA).
            ca_certs=os.environ.get("SSL_CERT_FILE"),
        )
        return await websocket_connect(request, ping_interval=20)

    async def _watch_kernel(self):
        """A kernel that died on its own (`exit()`, a crash) is started again, as Jupyter does."""
        while True:
            await asyncio.sleep(1)
            if not self.restarting and not await self.km.is_alive():
                _log("the kernel died: restarting it")
                await self.km.start_kernel(cwd=self.cwd)
                await self._wait_ready()
                await self._send(json.dumps({"capstan": "restarted"}))

    async def run(self):
        await self.start()
        pumps = [asyncio.ensure_future(self._pump(c)) for c in ("iopub", "shell", "stdin", "control")]
        watch = asyncio.ensure_future(self._watch_kernel())
        loop = asyncio.get_running_loop()
        lost_since = None
        delay = 0.2
        while True:
            try:
                self.ws = await self._dial()
            except Exception as e:
                now = loop.time()
                lost_since = lost_since or now
                if now - lost_since > _REDIAL_FOR:
                    _log(f"the daemon is unreachable ({e}): stopping the kernel")
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            lost_since, delay = None, 0.2
            _log("connected to the daemon")
            await self._send(json.dumps({"capstan": "ready"}))
            while True:
                text = await self.ws.read_message()
                if text is None:
                    break
                try:
                    await self._handle(text)
                except Exception as e:
                    _log(f"a message failed: {e}")
            self.ws = None
            _log("the daemon closed the connection: dialling again")
        for t in pumps + [watch]:
            t.cancel()
        await self.km.shutdown_kernel(now=True)


def main(kernel_id, kernel_name="python3"):
    import tempfile

    # A recipe's user may have no writable home: the kernel's connection file and IPython's
    # profile go to a private temporary folder instead.
    scratch = tempfile.mkdtemp(prefix="capstan-kernel-")
    os.environ.setdefault("JUPYTER_RUNTIME_DIR", os.path.join(scratch, "runtime"))
    os.environ.setdefault("IPYTHONDIR", os.path.join(scratch, "ipython"))
    try:
        import jupyter_client  # noqa: F401
        import ipykernel  # noqa: F401
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

        KernelSpecManager().get_kernel_spec(kernel_name)
    except ImportError as e:
        raise SystemExit(
            f"this code environment has no Jupyter kernel ({e.name} is missing): set "
            "`with_jupyter = true` on it and rebuild it (`capstan env build NAME`)"
        )
    except NoSuchKernel:
        raise SystemExit(
            f"this image has no `{kernel_name}` kernel (IRkernel is missing): set "
            "`with_jupyter = true` on the code environment and rebuild it (`capstan env build NAME`)"
        )
    asyncio.run(Agent(kernel_id, kernel_name).run())

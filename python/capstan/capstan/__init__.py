"""capstan's Python runtime: what a recipe knows about its run, and its datasets.

The same recipe code runs unchanged as a local process, in a Docker container or in a pod: the
client finds the data API and the activity's token in the activity's environment
(`CAPSTAN_API_URL`, and `CAPSTAN_TOKEN_FILE`, a file holding the token).

    import capstan
    orders = capstan.Dataset("orders").to_pandas()
    totals = orders.groupby("customer", as_index=False)["amount"].sum()
    capstan.Output("order_totals").write(totals)

Reading and writing need pyarrow (and pandas for `to_pandas`). The token allows exactly the
recipe's declared inputs and outputs; anything else raises PermissionError.
"""

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request

__version__ = "0.1.0"

__all__ = ["Dataset", "Output", "context", "in_capstan", "tensorboard_dir", "CapstanError"]

_FIELDS = {
    "job_id": "CAPSTAN_JOB_ID",
    "activity_id": "CAPSTAN_ACTIVITY_ID",
    "project": "CAPSTAN_PROJECT",
    "recipe": "CAPSTAN_RECIPE",
    "user": "CAPSTAN_USER",
    "exec_config": "CAPSTAN_EXEC_CONFIG",
}


class CapstanError(RuntimeError):
    """The data API refused or failed a request; the message says why."""


def in_capstan():
    """Whether this process runs as a capstan activity."""
    return "CAPSTAN_ACTIVITY_ID" in os.environ


def context():
    """The run this process belongs to: job, activity, project, recipe, user, exec config.

    Outside capstan every value is None, so a recipe can be tried with plain `python3`.
    """
    return {name: os.environ.get(var) for name, var in _FIELDS.items()}


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "capstan datasets need pyarrow: add it to the recipe's code environment "
            "(packages = [\"pyarrow\", \"pandas\"])"
        ) from e
    return pyarrow


def _endpoint():
    url = os.environ.get("CAPSTAN_API_URL")
    token_file = os.environ.get("CAPSTAN_TOKEN_FILE")
    token = os.environ.get("CAPSTAN_TOKEN")
    if token_file:
        with open(token_file) as f:
            token = f.read().strip()
    if not url or not token:
        raise CapstanError(
            "no capstan data API here: run the recipe with `capstan run` "
            "(or set CAPSTAN_API_URL and CAPSTAN_TOKEN)"
        )
    return url.rstrip("/"), token


def _raise_for(status, body, url):
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace")[:500] if isinstance(body, bytes) else str(body)
    if status == 403:
        raise PermissionError(message)
    if status == 401:
        raise PermissionError(f"capstan refused the activity's token: {message}")
    raise CapstanError(f"{message} (HTTP {status} from {url})")


def _project(project):
    p = project or os.environ.get("CAPSTAN_PROJECT")
    if not p:
        raise CapstanError("no project: pass project= or run the recipe with `capstan run`")
    return p


def _read_exact(resp, n):
    """Exactly `n` bytes of an HTTP answer's body, in one buffer (no copy while joining)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = resp.readinto(view[got:])
        if not k:
            raise CapstanError(f"the data API's answer ended early ({got} of {n} bytes)")
        got += k
    return buf


def _row_groups(resp, pa, pq):
    """A `parquet-stream` answer as one Table: each row group decoded while the next arrives."""
    from concurrent.futures import ThreadPoolExecutor

    decode = lambda buf: pq.read_table(pa.BufferReader(pa.py_buffer(buf)))
    with ThreadPoolExecutor(2) as pool:
        parts = []
        while True:
            n = int.from_bytes(_read_exact(resp, 8), "little")
            if n == 0:
                break
            parts.append(pool.submit(decode, _read_exact(resp, n)))
        tables = [p.result() for p in parts]
    # The first holds the schema alone: a dataset without rows keeps its columns.
    return pa.concat_tables(tables)


class Dataset:
    """A dataset the recipe reads (one of its declared inputs)."""

    def __init__(self, name, project=None):
        self.name = name
        self.project = _project(project)

    def _open(self, columns=None, limit=None, fmt="arrow"):
        base, token = _endpoint()
        query = {"format": fmt}
        if columns:
            query["columns"] = ",".join(columns)
        if limit is not None:
            query["limit"] = str(limit)
        path = (
            f"/api/v1/projects/{urllib.parse.quote(self.project)}/datasets/"
            f"{urllib.parse.quote(self.name)}/data?{urllib.parse.urlencode(query)}"
        )
        req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
        try:
            return urllib.request.urlopen(req, timeout=120)
        except urllib.error.HTTPError as e:
            _raise_for(e.code, e.read(), base + path)
        except urllib.error.URLError as e:
            raise CapstanError(f"cannot reach the capstan data API at {base}: {e.reason}") from e

    def iter_batches(self, columns=None, limit=None):
        """The dataset as pyarrow RecordBatches, streamed."""
        with self._open(columns, limit) as resp:
            reader = _pyarrow().ipc.open_stream(resp)
            for batch in reader:
                yield batch

    def to_arrow(self, columns=None, limit=None):
        """The dataset as a pyarrow Table (its columns in the stored order). It comes as its
        stored Parquet row groups, only the columns asked for, each decoded (on every core)
        while the next one arrives; with a limit, as an Arrow stream the API decodes."""
        if limit is None:
            # The API first: its refusals come before a missing pyarrow.
            with self._open(columns, fmt="parquet-stream") as resp:
                pa = _pyarrow()
                try:
                    import pyarrow.parquet as pq
                except ImportError:  # a pyarrow built without Parquet
                    pq = None
                if pq is not None:
                    return _row_groups(resp, pa, pq)
        with self._open(columns, limit) as resp:
            return _pyarrow().ipc.open_stream(resp).read_all()

    def to_pandas(self, columns=None, limit=None):
        """The dataset as a pandas DataFrame."""
        return self.to_arrow(columns, limit).to_pandas()


class Output:
    """A dataset the recipe writes (one of its declared outputs). The write becomes visible when
    the activity succeeds; a failed activity leaves the previous version in place."""

    def __init__(self, name, project=None):
        self.name = name
        self.project = _project(project)

    def write(self, data):
        """Writes a pandas DataFrame, a pyarrow Table or RecordBatch; returns the rows written."""
        pa = _pyarrow()
        if hasattr(data, "to_batches"):
            table = data
        elif isinstance(data, pa.RecordBatch):
            table = pa.Table.from_batches([data])
        else:
            table = pa.Table.from_pandas(data, preserve_index=False)
        base, token = _endpoint()
        path = (
            f"/api/v1/projects/{urllib.parse.quote(self.project)}/datasets/"
            f"{urllib.parse.quote(self.name)}/data"
        )

        def chunks():
            sink = _ChunkSink()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                for batch in table.to_batches(max_chunksize=64 * 1024):
                    writer.write_batch(batch)
                    yield from sink.take()
            yield from sink.take()

        parsed = urllib.parse.urlsplit(base)
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=600)
        try:
            conn.request(
                "PUT",
                path,
                body=chunks(),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/vnd.apache.arrow.stream",
                },
                encode_chunked=True,
            )
            resp = conn.getresponse()
            body = resp.read()
        except OSError as e:
            # The API may have refused the write before reading all of it: its answer says why.
            try:
                resp = conn.getresponse()
                body = resp.read()
            except Exception:
                raise CapstanError(f"cannot reach the capstan data API at {base}: {e}") from e
        finally:
            conn.close()
        if resp.status >= 300:
            _raise_for(resp.status, body, base + path)
        return json.loads(body)["rows"]


class _ChunkSink:
    """A file-like sink for pyarrow that hands its bytes out in chunks."""

    def __init__(self):
        self._parts = []
        self.closed = False

    def write(self, b):
        self._parts.append(bytes(b))
        return len(b)

    def flush(self):
        pass

    def close(self):
        self.closed = True

    def take(self):
        parts, self._parts = self._parts, []
        return [p for p in parts if p]


# ---- TensorBoard ---------------------------------------------------------------------------

# How often event files travel to the daemon while the recipe runs (so a TensorBoard shows a
# training under way), besides once at its end.
TENSORBOARD_SYNC_SECONDS = 30

_tensorboard = None


def tensorboard_dir():
    """The folder to write TensorBoard event files to, e.g.
    `torch.utils.tensorboard.SummaryWriter(capstan.tensorboard_dir())` or Keras'
    `TensorBoard(log_dir=capstan.tensorboard_dir())`.

    In capstan, what the folder holds is kept with the job, whether the recipe runs as a local
    process, in a container or in a pod: it is uploaded every 30 seconds while the recipe runs
    and once when it ends, and `capstan tensorboard JOB` serves it. Outside capstan it is
    `./tensorboard`.
    """
    global _tensorboard
    if _tensorboard is None:
        if in_capstan() and os.environ.get("CAPSTAN_API_URL"):
            _tensorboard = _TensorBoardSync()
        else:
            path = os.path.abspath("tensorboard")
            os.makedirs(path, exist_ok=True)
            return path
    return _tensorboard.path


class _TensorBoardSync:
    """Uploads the event folder when it changed: now and then from a thread, and at exit."""

    def __init__(self):
        import atexit
        import tempfile
        import threading

        self.path = tempfile.mkdtemp(prefix="capstan-tensorboard-")
        self._lock = threading.Lock()
        self._sent = None
        self._warned = False
        job, _, idx = os.environ["CAPSTAN_ACTIVITY_ID"].partition("-")
        self._url_path = f"/api/v1/jobs/{job}/activities/{idx}/tensorboard"
        atexit.register(self._final)
        t = threading.Thread(target=self._loop, name="capstan-tensorboard", daemon=True)
        t.start()

    def _state(self):
        seen = []
        for root, _, files in os.walk(self.path):
            for f in files:
                st = os.stat(os.path.join(root, f))
                seen.append((os.path.relpath(os.path.join(root, f), self.path), st.st_size, st.st_mtime_ns))
        return sorted(seen)

    def sync(self):
        """Uploads the folder if it changed since the last upload."""
        import io
        import tarfile

        with self._lock:
            state = self._state()
            if not state or state == self._sent:
                return
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for rel, _, _ in state:
                    tar.add(os.path.join(self.path, rel), arcname=rel, recursive=False)
            base, token = _endpoint()
            req = urllib.request.Request(
                base + self._url_path,
                data=buf.getvalue(),
                method="PUT",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-tar"},
            )
            try:
                with urllib.request.urlopen(req, timeout=300) as resp:
                    resp.read()
            except urllib.error.HTTPError as e:
                _raise_for(e.code, e.read(), base + self._url_path)
            except urllib.error.URLError as e:
                raise CapstanError(f"cannot reach the capstan data API at {base}: {e.reason}") from e
            self._sent = state

    def _loop(self):
        import time

        while True:
            time.sleep(TENSORBOARD_SYNC_SECONDS)
            try:
                self.sync()
            except Exception as e:  # the recipe goes on; the upload at exit tries again
                if not self._warned:
                    self._warned = True
                    print(f"capstan: cannot upload TensorBoard event files yet: {e}", file=__import__("sys").stderr, flush=True)

    def _final(self):
        import sys

        try:
            self.sync()
        except Exception as e:
            print(f"capstan: the TensorBoard event files were not kept: {e}", file=sys.stderr, flush=True)

"""A minimal Streamlit browser stand-in: one websocket session against a running ``streamlit run`` server.

It speaks the same protocol as the browser (protobuf ``BackMsg``/``ForwardMsg`` on ``/_stcore/stream``,
uploads through ``PUT /_stcore/upload_file/<session>/<file>`` with the XSRF cookie and header), so the
hosting, privacy and load tests drive the real server the Docker image runs, not an in-process copy.

Only what the tests need: run a page, read back the elements it drew, upload a file, set a radio or
slider by its widget key. Loopback only.
"""

from __future__ import annotations

import http.client
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ClientState_pb2 import ClientState
from streamlit.proto.Common_pb2 import FileURLsRequest, FileUploaderState, UploadedFileInfo
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState, WidgetStates
from websockets.sync.client import connect
from websockets.typing import Subprotocol

XSRF_COOKIE = "_streamlit_xsrf"


class StreamlitProtocolError(RuntimeError):
    """The server answered something the client did not expect (or nothing in time)."""


@dataclass
class Page:
    """What one script run drew: its elements by delta path, in order."""

    elements: list = field(default_factory=list)  # streamlit.proto Element messages
    status: int | None = None  # ForwardMsg.ScriptFinishedStatus
    seconds: float = 0.0
    fragment_of: dict = field(default_factory=dict)  # widget id -> id of the st.fragment that drew it

    def of(self, kind: str) -> list:
        return [e for e in self.elements if e.WhichOneof("type") == kind]

    @property
    def metrics(self) -> list[tuple[str, str]]:
        return [(e.metric.label, e.metric.body) for e in self.of("metric")]

    @property
    def predictions(self) -> list[str]:
        from medrobust.dashboard.captions import VERDICT_LABELS

        return [body for label, body in self.metrics if label in VERDICT_LABELS]

    @property
    def progress_texts(self) -> list[str]:
        return [e.progress.text for e in self.of("progress")]

    @property
    def errors(self) -> list[str]:
        return [e.alert.body for e in self.of("alert") if e.alert.format == e.alert.ERROR]

    @property
    def exceptions(self) -> list[str]:
        return [f"{e.exception.type}: {e.exception.message}" for e in self.of("exception")]

    def text(self) -> str:
        """Every string the page shows (bodies, labels, captions, alerts, exceptions), one per line."""
        out = []
        for e in self.elements:
            kind = e.WhichOneof("type")
            if kind is None:
                continue
            msg = getattr(e, kind)
            out.append(str(msg))
        return "\n".join(out)

    def widget_id(self, key: str) -> str:
        for e in self.elements:
            kind = e.WhichOneof("type")
            wid = getattr(getattr(e, kind), "id", None) if kind else None
            if isinstance(wid, str) and wid.endswith("-" + key):
                return wid
        raise KeyError(f"No widget with key {key!r} on the page.")


def _widget_id(element) -> str:
    kind = element.WhichOneof("type")
    wid = getattr(getattr(element, kind), "id", None) if kind else None
    return wid if isinstance(wid, str) else ""


class StreamlitSession:
    """One browser tab: ``with StreamlitSession(url) as s: page = s.run("stress-test")``."""

    def __init__(self, base_url: str, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        parts = urlsplit(self.base_url)
        self.host, self.port = parts.hostname, parts.port
        self.cookies: dict[str, str] = {}  # every cookie the server set, sent back as a browser does (a proxy's too)
        self.xsrf = self._fetch_xsrf_cookie()
        protocols = [Subprotocol("streamlit")] + ([Subprotocol(self.xsrf)] if self.xsrf else [])
        self.ws = connect(f"ws://{self.host}:{self.port}/_stcore/stream", subprotocols=protocols,
                          additional_headers={"Cookie": self._cookie_header()} if self.cookies else None,
                          max_size=None, open_timeout=timeout, close_timeout=5, legacy=True)
        self.session_id: str | None = None
        self.widgets: dict[str, WidgetState] = {}
        self.page_name = ""
        self.last: Page | None = None
        self._drawn: dict[tuple, tuple[object, str]] = {}

    # -- plumbing
    def _http(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def _fetch_xsrf_cookie(self) -> str:
        status, headers, _ = self._http("GET", "/_stcore/health")  # the browser's first call; sets the cookie
        if status != 200:
            raise StreamlitProtocolError(f"GET /_stcore/health answered {status}")
        for name, value in headers:
            if name.lower() == "set-cookie":
                key, _, val = value.split(";", 1)[0].partition("=")
                self.cookies[key.strip()] = val.strip()
        return self.cookies.get(XSRF_COOKIE, "").strip('"')

    def _send(self, msg: BackMsg) -> None:
        self.ws.send(msg.SerializeToString())

    def _recv(self, deadline: float) -> ForwardMsg:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StreamlitProtocolError("timed out waiting for the server")
        try:
            data = self.ws.recv(timeout=left)
        except TimeoutError:
            raise StreamlitProtocolError("timed out waiting for the server") from None
        msg = ForwardMsg()
        msg.ParseFromString(data)
        return msg

    # -- API
    def run(self, page_name: str | None = None, *, timeout: float | None = None, fragment_id: str = "") -> Page:
        """Ask for a rerun with the current widget states and collect what the script draws.

        With ``fragment_id`` only that fragment reruns, as when the browser reports a change of a widget inside an
        ``st.fragment``; the returned page is then the last page with the fragment's part redrawn (the browser keeps
        everything outside the fragment and replaces what the fragment drew).
        """
        if page_name is not None:
            self.page_name = page_name
        state = ClientState(query_string="", page_name=self.page_name,
                            widget_states=WidgetStates(widgets=list(self.widgets.values())), fragment_id=fragment_id)
        t0 = time.monotonic()
        self._send(BackMsg(rerun_script=state))
        deadline = t0 + (timeout or self.timeout)
        drawn: dict[tuple, tuple[object, str]] = {}  # delta path -> (element or None for a block, fragment id)
        while True:
            msg = self._recv(deadline)
            kind = msg.WhichOneof("type")
            if kind == "new_session":
                drawn.clear()
                if msg.new_session.initialize.session_id:
                    self.session_id = msg.new_session.initialize.session_id
                self.config = msg.new_session.config
            elif kind == "delta" and msg.delta.WhichOneof("type") in ("new_element", "add_block"):
                element = msg.delta.new_element if msg.delta.WhichOneof("type") == "new_element" else None
                drawn[tuple(msg.metadata.delta_path)] = (element, msg.delta.fragment_id)
            elif kind == "script_finished":
                if msg.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    continue
                if fragment_id:  # keep what the fragment did not draw, replace what it drew
                    self._drawn = {k: v for k, v in self._drawn.items() if v[1] != fragment_id}
                    self._drawn.update(drawn)
                else:
                    self._drawn = drawn
                page = Page(elements=[self._drawn[k][0] for k in sorted(self._drawn) if self._drawn[k][0] is not None],
                            status=msg.script_finished, seconds=time.monotonic() - t0)
                page.fragment_of = {w: f for k, (e, f) in self._drawn.items() if e is not None and f
                                    for w in [_widget_id(e)] if w}
                self.last = page
                return page

    def upload(self, key: str, name: str, data: bytes, mime: str = "application/octet-stream", *,
               timeout: float | None = None) -> Page:
        """Upload ``data`` into the file uploader with widget key ``key`` (as a browser does), then rerun."""
        if self.last is None or self.session_id is None:
            raise StreamlitProtocolError("run the page before uploading")
        wid = self.last.widget_id(key)
        req = uuid.uuid4().hex
        self._send(BackMsg(file_urls_request=FileURLsRequest(request_id=req, file_names=[name],
                                                             session_id=self.session_id)))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._recv(deadline)
            if msg.WhichOneof("type") == "file_urls_response" and msg.file_urls_response.response_id == req:
                break
        urls = msg.file_urls_response.file_urls[0]
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: {mime}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        path = urlsplit(urls.upload_url).path or urls.upload_url
        if not path.startswith("/"):
            path = "/" + path
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(len(body))}
        if self.xsrf:
            headers["X-Xsrftoken"] = self.xsrf
        if self.cookies:
            headers["Cookie"] = self._cookie_header()
        status, _, answer = self._http("PUT", path, body=body, headers=headers)
        if status not in (200, 204):
            raise StreamlitProtocolError(f"upload answered {status}: {answer[:200]!r}")
        self.widgets[wid] = WidgetState(id=wid, file_uploader_state_value=FileUploaderState(
            uploaded_file_info=[UploadedFileInfo(name=name, size=len(data), file_id=urls.file_id, file_urls=urls)]))
        return self.run(timeout=timeout)

    def set_values(self, values: dict[str, str | float], **kw) -> Page:
        """Set several widgets by key in one rerun: a str for a radio/selectbox label, a float for a slider.

        As the browser does, a change of widgets that all sit in one ``st.fragment`` reruns that fragment only
        (``fragments=False`` asks for a full rerun instead).
        """
        fragments = kw.pop("fragments", True)
        ids = []
        for key, value in values.items():
            wid = self.last.widget_id(key)
            ws = WidgetState(id=wid)
            if isinstance(value, str):
                ws.string_value = value
            else:
                ws.double_array_value.data[:] = [float(value)]
            self.widgets[wid] = ws
            ids.append(wid)
        owners = {self.last.fragment_of.get(w, "") for w in ids}
        fragment = owners.pop() if fragments and len(owners) == 1 else ""
        return self.run(fragment_id=fragment, **kw)

    def set_radio(self, key: str, label: str, **kw) -> Page:
        return self.set_values({key: label}, **kw)

    def set_slider(self, key: str, value: float, **kw) -> Page:
        return self.set_values({key: float(value)}, **kw)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing a dead socket
            pass

    def __enter__(self) -> "StreamlitSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

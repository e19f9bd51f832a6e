#!/usr/bin/env python3
"""The benchmark's observer inside the lab: one long-lived process in host
namespace 1 that can reach every cell over the bridge.

The root namespace cannot reach namespace addresses, and one `ip netns exec`
per request costs ~10 ms, so run.py starts this once per lab and talks to it
with JSON lines: commands on stdin, observations on stdout. Every observation
carries `t`, time.monotonic() at the moment it was seen; CLOCK_MONOTONIC is
system-wide, so it is the same clock as run.py's in the root namespace.

Commands (one JSON object per line):
  {"op": "sse", "tag": T, "url": U, "retry_for": S}
      follow GET U as Server-Sent Events. Connection attempts are retried
      (every 4 ms for 1 s, then every 20 ms) for at most S seconds: the cell
      may not be listening yet.
      Emits {"ev": "sse_open"}, then one {"ev": "sse", "type", "data"} per
      event; {"ev": "sse_closed", "why"} when the stream ends unasked, after
      which it reconnects (at most 20 times).
  {"op": "sse_stop", "tag": T}       stop following T (no further lines for T).
  {"op": "http", "id": I, "method": M, "url": U, "body": B?, "timeout": S?}
      one request; emits {"ev": "http", "id", "t0" (sent), "t1" (answered),
      "status", "body" (JSON if it parses, else text), "error"}.
  {"op": "quit"}
stdin closing also ends the process, so it cannot outlive run.py.

Standard library only.
"""

import http.client
import json
import socket
import sys
import threading
import time
import urllib.parse

_out_lock = threading.Lock()


def emit(obj):
    line = json.dumps(obj, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _split(url):
    u = urllib.parse.urlsplit(url)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    return u.hostname, u.port or 80, path


class SseFollower(threading.Thread):
    """Follows one SSE stream. Stopping closes the socket to unblock reads."""

    # A cell listens a few ms after it starts and a small mesh converges in
    # ~20 ms, so retry fast at first (the snapshot of a late stream only
    # bounds the convergence time), then back off to spare the CPU.
    RETRY_FAST, FAST_FOR, RETRY_SLOW = 0.004, 1.0, 0.02

    def __init__(self, tag, url, retry_for):
        super().__init__(daemon=True)
        self.tag = tag
        self.url = url
        self.retry_for = float(retry_for)
        self.stopped = threading.Event()
        self.conn = None

    def stop(self):
        self.stopped.set()
        conn = self.conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    MAX_RECONNECTS = 20

    def run(self):
        # A stream that ends without our asking (the cell dropped a client
        # that fell behind, say) is reopened: its first event is a fresh
        # snapshot, so no state is lost. Bounded in count.
        for _ in range(self.MAX_RECONNECTS + 1):
            if not self._follow_once() or self.stopped.is_set():
                return

    def _follow_once(self):
        """Returns True when the stream was open and ended unasked."""
        host, port, path = _split(self.url)
        began = time.monotonic()
        deadline = began + self.retry_for
        resp = None
        last_err = "never tried"
        # Bounded by retry_for: the cell may still be starting.
        while not self.stopped.is_set():
            conn = http.client.HTTPConnection(host, port, timeout=2.0)
            try:
                conn.request("GET", path, headers={"Accept": "text/event-stream"})
                resp = conn.getresponse()
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
                # Connected: from now on reads block until the cell sends
                # something (keep-alives come every 15 s).
                conn.sock.settimeout(None)
                self.conn = conn
                break
            except (OSError, http.client.HTTPException) as e:
                last_err = str(e)
                conn.close()
                resp = None
                if time.monotonic() >= deadline:
                    break
                fast = time.monotonic() - began < self.FAST_FOR
                time.sleep(self.RETRY_FAST if fast else self.RETRY_SLOW)
        if resp is None:
            if not self.stopped.is_set():
                emit({"ev": "sse_closed", "tag": self.tag, "t": time.monotonic(),
                      "why": f"could not connect: {last_err}"})
            return False
        if self.stopped.is_set():
            self.conn.close()
            return False
        emit({"ev": "sse_open", "tag": self.tag, "t": time.monotonic()})
        why = "eof"
        ev_type, data_lines = None, []
        try:
            while not self.stopped.is_set():
                raw = resp.readline()
                t = time.monotonic()
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line == "":
                    if data_lines:
                        text = "\n".join(data_lines)
                        try:
                            data = json.loads(text)
                        except ValueError:
                            data = text
                        emit({"ev": "sse", "tag": self.tag, "t": t,
                              "type": ev_type or "message", "data": data})
                    ev_type, data_lines = None, []
                elif line.startswith(":"):
                    continue  # keep-alive comment
                elif line.startswith("event:"):
                    ev_type = line[6:].strip()
                elif line.startswith("data:"):
                    data_lines.append(line[5:].lstrip(" "))
        except (OSError, http.client.HTTPException, ValueError) as e:
            why = f"error: {e}"
        finally:
            try:
                self.conn.close()
            except OSError:
                pass
        if self.stopped.is_set():
            return False
        emit({"ev": "sse_closed", "tag": self.tag, "t": time.monotonic(), "why": why})
        return True


def do_http(cmd):
    rid = cmd.get("id")
    host, port, path = _split(cmd["url"])
    method = cmd.get("method", "GET")
    body = cmd.get("body")
    headers = {}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(host, port, timeout=float(cmd.get("timeout", 5.0)))
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        t1 = time.monotonic()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        emit({"ev": "http", "id": rid, "t0": t0, "t1": t1, "status": resp.status,
              "body": parsed, "error": None})
    except (OSError, http.client.HTTPException) as e:
        emit({"ev": "http", "id": rid, "t0": t0, "t1": time.monotonic(), "status": None,
              "body": None, "error": str(e)})
    finally:
        conn.close()


def main():
    followers = {}
    emit({"ev": "ready", "t": time.monotonic()})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            op = cmd["op"]
        except (ValueError, KeyError, TypeError) as e:
            emit({"ev": "error", "t": time.monotonic(), "error": f"bad command {line!r}: {e}"})
            continue
        if op == "sse":
            old = followers.pop(cmd["tag"], None)
            if old is not None:
                old.stop()
            f = SseFollower(cmd["tag"], cmd["url"], cmd.get("retry_for", 10.0))
            followers[cmd["tag"]] = f
            f.start()
        elif op == "sse_stop":
            f = followers.pop(cmd["tag"], None)
            if f is not None:
                f.stop()
        elif op == "http":
            threading.Thread(target=do_http, args=(cmd,), daemon=True).start()
        elif op == "quit":
            break
        else:
            emit({"ev": "error", "t": time.monotonic(), "error": f"unknown op {op!r}"})
    for f in followers.values():
        f.stop()


if __name__ == "__main__":
    main()

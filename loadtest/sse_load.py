#!/usr/bin/env python3
"""Closed-loop load for server-sent event streams, timing every chunk.

`C` keep-alive connections each POST a request, read the SSE answer to its
`data: [DONE]`, and start the next one, for `--seconds`. For every stream it
records when the request was sent, when each event carrying text arrived
(an OpenAI chunk with a non-empty `delta.content` or `text`) and when the
stream ended. It prints one JSON line (times in microseconds):

- `p50` ... `max`: whole stream, request sent to `[DONE]`;
- `ttft_*`: request sent to the first text chunk (time to first token);
- `gap_*`: between consecutive text chunks of a stream, all streams pooled;
- `tokens_per_s`: completion tokens (the stream's `usage` when it has one,
  otherwise one per text chunk) of all streams over the run's duration;
  `stream_tokens_per_s_p50`: the median over streams of tokens / (last text
  chunk - request sent);
- `errors`: streams that failed (`error_kinds` says how): a status other
  than 200, not `text/event-stream`, a connection lost or a timeout before
  `[DONE]`, an `error` event, or (with `--expect-chunks`) another number of
  text chunks.

Standard library only (asyncio protocols on raw sockets); used by
loadtest/run.py, which pins it to the load generator's CPU.

    sse_load.py --url http://127.0.0.1:8000/v1/chat/completions \\
        --body '{"model":"tiny-lm","stream":true,"messages":[...]}' -c 4 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import urllib.parse
from collections import Counter

now = time.perf_counter


class StreamError(Exception):
    pass


class Conn(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.done: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()  # raw bytes not parsed yet
        self.state = "head"
        self.status = 0
        self.headers: dict[str, str] = {}
        self.remaining = 0  # bytes left in this chunk / body
        self.framing = "close"
        self.sse = bytearray()  # de-framed body not yet split into events
        self.events: list[tuple[float, bytes]] = []
        self.body = bytearray()  # a non-SSE body, for the error message
        self.end = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.done and not self.done.done():
            if self.state == "body" and self.framing == "close":
                self.end = now()
                self.done.set_result(True)
            else:
                self.done.set_exception(StreamError("connection lost"))

    def request(self, raw: bytes) -> asyncio.Future:
        self._reset()
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.done

    def data_received(self, data: bytes) -> None:
        t = now()
        self.buf += data
        try:
            self._parse(t)
        except (StreamError, ValueError) as e:  # ValueError: a bad length or chunk size
            if self.done and not self.done.done():
                self.done.set_exception(e if isinstance(e, StreamError) else StreamError("bad framing"))
            self.transport.close()

    def _body(self, piece: bytes, t: float) -> None:
        if not self.headers.get("content-type", "").startswith("text/event-stream"):
            self.body += piece
            return
        self.sse += piece
        while True:
            i = self.sse.find(b"\n\n")
            if i < 0:
                return
            self.events.append((t, bytes(self.sse[:i])))
            del self.sse[: i + 2]

    def _finish(self, t: float) -> None:
        self.state = "done"
        self.end = t
        if self.done and not self.done.done():
            self.done.set_result(True)

    def _parse(self, t: float) -> None:
        while True:
            if self.state == "head":
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    return
                head = bytes(self.buf[:i]).decode("latin-1").split("\r\n")
                del self.buf[: i + 4]
                parts = head[0].split(" ", 2)
                if len(parts) < 2 or not parts[1].isdigit():
                    raise StreamError(f"bad status line {head[0]!r}")
                self.status = int(parts[1])
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    self.headers[k.strip().lower()] = v.strip()
                if "chunked" in self.headers.get("transfer-encoding", "").lower():
                    self.framing, self.state = "chunked", "size"
                elif "content-length" in self.headers:
                    self.framing, self.state = "length", "body"
                    self.remaining = int(self.headers["content-length"])
                    if self.remaining == 0:
                        self._finish(t)
                        return
                else:
                    self.framing, self.state = "close", "body"
            elif self.state == "size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return
                size = int(bytes(self.buf[:i]).split(b";")[0], 16)
                del self.buf[: i + 2]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining, self.state = size, "chunk"
            elif self.state == "chunk":
                if not self.buf:
                    return
                piece = bytes(self.buf[: self.remaining])
                del self.buf[: len(piece)]
                self.remaining -= len(piece)
                self._body(piece, t)
                if self.remaining == 0:
                    self.state = "crlf"
            elif self.state == "crlf":
                if len(self.buf) < 2:
                    return
                if self.buf[:2] != b"\r\n":
                    raise StreamError("bad chunk framing")
                del self.buf[:2]
                self.state = "size"
            elif self.state == "trailer":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return
                line = self.buf[:i]
                del self.buf[: i + 2]
                if not line:
                    self._finish(t)
                    return
            elif self.state == "body":
                if not self.buf:
                    return
                if self.framing == "length":
                    piece = bytes(self.buf[: self.remaining])
                    self.remaining -= len(piece)
                else:
                    piece = bytes(self.buf)
                del self.buf[: len(piece)]
                self._body(piece, t)
                if self.framing == "length" and self.remaining == 0:
                    self._finish(t)
                    return
            else:  # done: bytes after the answer are not expected
                if self.buf:
                    raise StreamError("bytes after the answer")
                return


def text_of(event: dict) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    return (c.get("delta") or {}).get("content") or c.get("text") or ""


def analyse(conn: Conn, sent: float, expect_chunks: int | None) -> dict:
    """The figures of one finished stream; raises StreamError for a broken one."""
    if conn.status != 200:
        raise StreamError(f"status {conn.status}")
    if not conn.headers.get("content-type", "").startswith("text/event-stream"):
        raise StreamError("not text/event-stream")
    if conn.sse.strip():
        raise StreamError("unterminated event")
    times, tokens, done = [], None, False
    for t, raw in conn.events:
        data = b"\n".join(line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:"))
        if not data:
            continue
        if done:
            raise StreamError("event after [DONE]")
        if data == b"[DONE]":
            done = True
            continue
        try:
            event = json.loads(data)
        except ValueError:
            raise StreamError("event is not JSON") from None
        if "error" in event:
            raise StreamError("error event")
        if event.get("usage"):
            tokens = event["usage"].get("completion_tokens")
        if text_of(event):
            times.append(t)
    if not done:
        raise StreamError("no [DONE]")
    if not times:
        raise StreamError("no text chunk")
    if expect_chunks is not None and len(times) != expect_chunks:
        raise StreamError(f"{len(times)} text chunks, expected {expect_chunks}")
    tokens = len(times) if tokens is None else tokens
    last = times[-1] - sent
    return {
        "total": conn.end - sent,
        "ttft": times[0] - sent,
        "gaps": [b - a for a, b in zip(times, times[1:])],
        "chunks": len(times),
        "tokens": tokens,
        "tokens_per_s": tokens / last if last > 0 else 0.0,
    }


class Load:
    def __init__(self, args) -> None:
        u = urllib.parse.urlsplit(args.url)
        self.host, self.port = u.hostname, u.port or 80
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        body = args.body.encode()
        headers = [f"POST {path} HTTP/1.1", f"host: {u.netloc}", "content-type: application/json",
                   "accept: text/event-stream", f"content-length: {len(body)}", *args.header]
        self.raw = ("\r\n".join(headers) + "\r\n\r\n").encode() + body
        self.expect = args.expect_chunks
        self.timeout = args.timeout
        self.totals, self.ttfts, self.gaps, self.rates = [], [], [], []
        self.chunks = self.tokens = 0
        self.errors: Counter = Counter()

    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Conn, self.host, self.port)
        return conn

    async def worker(self, deadline: float) -> None:
        conn = None
        while now() < deadline:
            try:
                if conn is None or conn.lost:
                    conn = await self.connect()
                sent = now()
                await asyncio.wait_for(conn.request(self.raw), self.timeout)
                s = analyse(conn, sent, self.expect)
                if conn.headers.get("connection", "").lower() == "close":
                    conn.transport.close()
                    conn = None
            except (StreamError, OSError, asyncio.TimeoutError) as e:
                kind = "timeout" if isinstance(e, asyncio.TimeoutError) else (
                    str(e) if isinstance(e, StreamError) else type(e).__name__)
                self.errors[kind] += 1
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                await asyncio.sleep(0.01)
                continue
            self.totals.append(s["total"])
            self.ttfts.append(s["ttft"])
            self.gaps.extend(s["gaps"])
            self.rates.append(s["tokens_per_s"])
            self.chunks += s["chunks"]
            self.tokens += s["tokens"]
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    async def run(self, connections: int, seconds: float) -> dict:
        start = now()
        await asyncio.gather(*(self.worker(start + seconds) for _ in range(connections)))
        duration = now() - start
        row = {"streams": len(self.totals), "connections": connections,
               "duration_us": round(duration * 1e6), "errors": sum(self.errors.values()),
               "error_kinds": dict(self.errors), "rps": len(self.totals) / duration,
               "chunks": self.chunks, "tokens": self.tokens, "tokens_per_s": self.tokens / duration,
               "stream_tokens_per_s_p50": pct(self.rates, 50, scale=1.0)}
        for prefix, values in (("", self.totals), ("ttft_", self.ttfts), ("gap_", self.gaps)):
            for p in (50, 90, 99, 99.9):
                row[f"{prefix}p{str(p).replace('.', '')}"] = pct(values, p)
            row[f"{prefix}max"] = max(values) * 1e6 if values else 0.0
            row[f"{prefix}mean"] = sum(values) / len(values) * 1e6 if values else 0.0
        row["gaps"] = len(self.gaps)
        return row


def pct(values: list[float], p: float, scale: float = 1e6) -> float:
    """Nearest-rank percentile, in microseconds by default."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)] * scale


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--body", required=True, help="JSON request body")
    ap.add_argument("--header", action="append", default=[], help="extra 'name: value' header (repeatable)")
    ap.add_argument("-c", "--connections", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--expect-chunks", type=int, help="text chunks every stream must carry")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds one stream may take")
    args = ap.parse_args()
    row = asyncio.run(Load(args).run(args.connections, args.seconds))
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

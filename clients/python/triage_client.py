#!/usr/bin/env python3
"""Triage example client: publishes one request to `llm.requests` (with
`--tenant`, to `llm.requests.<tenant>`) through NATS JetStream and prints the answer as it streams in, then the completion (tier,
model, tokens, timings, routing reasons) or the error.

It is the proof that any language can use Triage with a NATS client and a
MessagePack library; the message formats are in ../../schemas/.

    triage_client.py "What is the capital of France?"
    triage_client.py --system "Answer briefly." --max-tokens 64 --tenant acme "Why is the sky blue?"
    triage_client.py --messages '[{"role": "user", "content": "hi"}]' --json
    triage_client.py --tier 2 --metadata team=search --timeout 60 "Prove that sqrt(2) is irrational."

With deploy/nats permissions, connect as the tenant's NATS user:
`--user acme` (or TRIAGE_NATS_USER) and TRIAGE_NATS_PASSWORD; answers then
arrive on `_INBOX.<tenant>.*`, the only inboxes that user may read.

Exit status: 0 completion, 1 error reply, 2 no final answer within the
timeout, 3 could not submit (NATS down, no stream: start Triage first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, TextIO

import msgpack

SCHEMA_VERSION = 1
MSGPACK_MIME = "application/msgpack"
JSON_MIME = "application/json"
# Header names, as in services/protocol/src/headers.rs.
CONTENT_TYPE = "Content-Type"
REPLY_TO = "Triage-Reply-To"
MSG_ID = "Nats-Msg-Id"
TRACEPARENT = "traceparent"
REPLY_TYPES = ("chunk", "completion", "error")


def uuid7() -> str:
    """A UUIDv7 (time-ordered), the id Triage itself would assign."""
    ms = time.time_ns() // 1_000_000
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | secrets.randbits(12) << 64
    value |= 0b10 << 62 | secrets.randbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_traceparent() -> str:
    """A W3C trace context header starting a new, sampled trace."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def build_request(
    prompt: Optional[str] = None,
    messages: Optional[list[dict[str, str]]] = None,
    *,
    id: Optional[str] = None,
    max_tokens: Optional[int] = None,
    temperature: Optional[float] = None,
    stream: bool = True,
    n: int = 1,
    tier: Optional[int] = None,
    tenant: Optional[str] = None,
    metadata: Optional[dict[str, Any]] = None,
    deadline_ms: Optional[int] = None,
    reply_to: Optional[str] = None,
    keep_result: bool = False,
    submitted_at_ms: Optional[int] = None,
) -> dict[str, Any]:
    """A request as in schemas/request.schema.json. Optional fields left at
    their defaults are omitted (Triage fills them in); `id` defaults to a
    fresh UUIDv7, the idempotency key."""
    if not prompt and not messages:
        raise ValueError("a request needs a prompt or messages")
    for m in messages or []:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"each message needs a string role and content, got {m!r}")
    if tier is not None and tier not in (1, 2):
        raise ValueError(f"tier must be 1 or 2, got {tier}")
    req: dict[str, Any] = {"version": SCHEMA_VERSION, "id": id or uuid7()}
    if messages:
        req["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    if prompt:
        req["prompt"] = prompt
    optional = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "tier": tier,
        "tenant": tenant,
        "deadline_ms": deadline_ms,
        "reply_to": reply_to,
        "submitted_at_ms": submitted_at_ms,
    }
    req.update({k: v for k, v in optional.items() if v is not None})
    if not stream:
        req["stream"] = False
    if n != 1:
        req["n"] = n
    if metadata:
        req["metadata"] = dict(metadata)
    if keep_result:
        req["keep_result"] = True
    return req


def encode(message: dict[str, Any], content_type: str = MSGPACK_MIME) -> bytes:
    """MessagePack with named fields (a map), or JSON."""
    if content_type == JSON_MIME:
        return json.dumps(message, separators=(",", ":")).encode()
    return msgpack.packb(message, use_bin_type=True)


def decode(payload: bytes, content_type: Optional[str]) -> dict[str, Any]:
    """Decodes by `Content-Type` as Triage does: JSON only when it says so."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime == JSON_MIME:
        value = json.loads(payload)
    else:
        value = msgpack.unpackb(payload, raw=False)
    if not isinstance(value, dict):
        raise ValueError(f"expected a map at the top level, got {type(value).__name__}")
    return value


def key_token(s: str) -> str:
    """`s` as one subject/key token, injectively: letters, digits and `-`
    kept, every other byte `_XX` (upper-case hex), the empty string `_`.
    The same rule as triage_protocol::ids::key_token."""
    if not s:
        return "_"
    return "".join(
        chr(b) if chr(b).isascii() and (chr(b).isalnum() or b == 0x2D) else f"_{b:02X}" for b in s.encode()
    )


def request_msg_id(request: dict[str, Any]) -> str:
    """JetStream's de-duplication key of a request: its id within its tenant
    (`request:<tenant>.<id>`), as every Triage client writes it."""
    return f"request:{key_token(request.get('tenant') or '')}.{key_token(request['id'])}"


def request_headers(request: dict[str, Any], reply_to: str, content_type: str = MSGPACK_MIME) -> dict[str, str]:
    """Headers for publishing `request`: encoding, where to answer (JetStream
    messages have no reply subject of their own), the tenant-scoped request
    id as JetStream's de-duplication key, and a new trace."""
    return {
        CONTENT_TYPE: content_type,
        REPLY_TO: reply_to,
        MSG_ID: request_msg_id(request),
        TRACEPARENT: new_traceparent(),
    }


def subject(prefix: str, base: str) -> str:
    """A Triage subject under the deployment prefix, if any."""
    prefix = prefix.strip().rstrip(".")
    return f"{prefix}.{base}" if prefix else base


class IncompleteAnswer(Exception):
    """The answer did not arrive whole: its text would be wrong."""


@dataclass
class AnswerCheck:
    """Checks that a streamed answer arrived whole, by the rules of
    triage_protocol::AnswerCheck (schemas/README.md): within an attempt `seq`
    counts from 0 without a gap or repeat; a higher attempt restarts the
    count (the earlier text is void), a lower one is stale; the completion's
    `chunks` and `text_bytes` must match what arrived of its attempt."""

    attempt: Optional[int] = None
    chunks: int = 0
    bytes: int = 0

    def chunk(self, reply: dict[str, Any]) -> Optional[bool]:
        """None for a stale chunk (ignore it), else whether it restarts the
        answer (earlier text void). Raises IncompleteAnswer on a gap or repeat."""
        attempt, seq = int(reply.get("attempt", 1)), int(reply.get("seq", 0))
        restarted = False
        if self.attempt is not None and attempt < self.attempt:
            return None
        if attempt != self.attempt:
            restarted = self.attempt is not None and self.chunks > 0
            self.attempt, self.chunks, self.bytes = attempt, 0, 0
        if seq < self.chunks:
            raise IncompleteAnswer(f"chunk {seq} of attempt {attempt} came again after chunk {self.chunks - 1} (a chunk repeated)")
        if seq > self.chunks:
            raise IncompleteAnswer(f"chunk {seq} of attempt {attempt} came where chunk {self.chunks} was due (a chunk was lost)")
        self.chunks += 1
        self.bytes += len(str(reply.get("delta", "")).encode("utf-8"))
        return restarted

    def completion(self, reply: dict[str, Any]) -> str:
        """Where the answer's text is: "streamed" (the chunks) or
        "in_completion" (its `text`). Raises IncompleteAnswer when the
        completion disagrees with what arrived."""
        attempt = int(reply.get("attempt", 1))
        chunks, received = (self.chunks, self.bytes) if attempt == self.attempt else (0, 0)
        text = reply.get("text")
        if text is not None and chunks == 0:
            source, received = "in_completion", len(str(text).encode("utf-8"))
        else:
            sent = int(reply.get("chunks", 0))
            if sent != chunks:
                raise IncompleteAnswer(f"the completion of attempt {attempt} says {sent} chunks were sent, {chunks} arrived")
            source = "streamed"
        sent_bytes = reply.get("text_bytes")
        if sent_bytes is not None and int(sent_bytes) != received:
            raise IncompleteAnswer(f"the completion of attempt {attempt} says {sent_bytes} bytes of text, {received} arrived")
        return source


def incomplete_error(request_id: str, detail: str) -> dict[str, Any]:
    """The error a client reports when the answer did not arrive whole."""
    return {
        "type": "error",
        "id": request_id,
        "code": "stream_incomplete",
        "message": f"the answer to request {request_id} did not arrive whole ({detail}); any text shown is void: send the request again",
        "retryable": True,
    }


TENANT_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def request_subject(prefix: str, tenant: Optional[str]) -> str:
    """Where a request goes: `llm.requests.<tenant>` binds it to the tenant
    (the router takes the tenant from the subject; deploy/nats lets each
    client user publish only its own), plain `llm.requests` without one."""
    if tenant is None:
        return subject(prefix, "llm.requests")
    if not TENANT_TOKEN.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r}: use 1 to 64 letters, digits, '-' or '_' (it is a subject token)")
    return subject(prefix, f"llm.requests.{tenant}")


def inbox_prefix(tenant: Optional[str]) -> str:
    """`_INBOX.<tenant>`: the only inboxes a client user may read under deploy/nats."""
    return f"_INBOX.{tenant}" if tenant else "_INBOX"


@dataclass
class AnswerPrinter:
    """Prints replies as they arrive: chunk text at once, a notice when a new
    attempt restarts the answer, and a summary line at the end. A lost or
    repeated chunk, or a completion that disagrees with what arrived, ends
    the answer with the error `stream_incomplete`."""

    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    check: AnswerCheck = field(default_factory=AnswerCheck)
    text: list[str] = field(default_factory=list)

    def handle(self, reply: dict[str, Any]) -> Optional[int]:
        """Shows one reply; returns the exit status once the answer is final."""
        kind = reply.get("type")
        try:
            if kind == "chunk":
                return self._chunk(reply)
            if kind == "completion":
                return self._completion(reply)
        except IncompleteAnswer as e:
            return self.handle(incomplete_error(str(reply.get("id", "")), str(e)))
        if kind == "error":
            if self.text:
                self.out.write("\n")
            retry = "retryable" if reply.get("retryable") else "not retryable"
            self.err.write(f"error {reply.get('code')}: {reply.get('message')} ({retry})\n")
            return 1
        self.err.write(f"[warning: ignoring a reply of unknown type {kind!r}]\n")
        return None

    def _chunk(self, reply: dict[str, Any]) -> None:
        restarted = self.check.chunk(reply)
        if restarted is None:
            return None  # a late chunk of a void attempt
        if restarted:
            self.out.write(f"\n[attempt {self.check.attempt}: the answer restarts]\n")
            self.text = []
        delta = str(reply.get("delta", ""))
        self.text.append(delta)
        self.out.write(delta)
        self.out.flush()
        return None

    def _completion(self, reply: dict[str, Any]) -> int:
        if self.check.completion(reply) == "in_completion":
            if self.text:
                self.out.write(f"\n[attempt {reply.get('attempt')}: the answer restarts]\n")
            self.out.write(str(reply["text"]))
        self.out.write("\n")
        usage = reply.get("usage") or {}
        routing = reply.get("routing") or {}
        parts = [
            f"tier {reply.get('tier')}",
            f"model {reply.get('model')}",
            f"finish {reply.get('finish_reason')}",
            f"tokens {usage.get('prompt_tokens')}+{usage.get('completion_tokens')}"
            + (" (estimated)" if usage.get("estimated") else ""),
            f"ttft {float(reply.get('ttft_ms', 0)):.0f} ms",
            f"total {float(reply.get('total_ms', 0)):.0f} ms",
            f"attempt {reply.get('attempt')}",
        ]
        if routing:
            parts.append(f"score {routing.get('score')}")
            if routing.get("reasons"):
                parts.append("reasons " + ",".join(routing["reasons"]))
        self.out.write("[" + "; ".join(parts) + "]\n")
        return 0


def duplicate_error(request_id: str) -> dict[str, Any]:
    """The error a client reports when JetStream de-duplicated its publish."""
    return {
        "type": "error",
        "id": request_id,
        "code": "duplicate_request",
        "message": f"request {request_id} was already accepted (the stream de-duplicated this submission "
        "by its id); its answer goes to the first submission: send a new request with a new id",
        "retryable": False,
    }


def full_stream_refusal(error: Exception) -> Optional[str]:
    """The server's reason when the stream refused the publish for being at
    its configured limit (NATS error code 10077, "maximum messages/bytes
    exceeded"); None for any other failure."""
    description = str(getattr(error, "description", "") or "")
    full = getattr(error, "err_code", None) == 10077 and (
        "maximum messages exceeded" in description or "maximum bytes exceeded" in description
    )
    return description if full else None


def queue_full_error(request_id: str, detail: str) -> dict[str, Any]:
    """The error a client reports when `llm.requests` refused the request."""
    return {
        "type": "error",
        "id": request_id,
        "code": "queue_full",
        "message": f"request {request_id} was not accepted, the request queue is full ({detail}); retry later",
        "retryable": True,
    }


async def submit(
    url: str,
    request: dict[str, Any],
    *,
    prefix: str = "",
    content_type: str = MSGPACK_MIME,
    timeout: float = 120.0,
    printer: Optional[AnswerPrinter] = None,
    user: Optional[str] = None,
    password: Optional[str] = None,
) -> int:
    """Publishes `request` on its tenant's subject and prints its answer;
    returns the exit status. `user`/`password` are the NATS credentials."""
    import nats  # imported here so the encoding helpers work without it
    from nats.errors import NoRespondersError, TimeoutError as NatsTimeout
    from nats.js.errors import NoStreamResponseError

    printer = printer or AnswerPrinter()

    async def quiet(_error: Exception) -> None:
        # nats-py logs a traceback per failed attempt; the outcome is reported below.
        pass

    try:
        nc = await nats.connect(
            url,
            name="triage-python-client",
            connect_timeout=5,
            max_reconnect_attempts=2,
            error_cb=quiet,
            user=user,
            password=password,
            inbox_prefix=inbox_prefix(request.get("tenant")),
        )
    except Exception as e:  # nats-py raises several unrelated types here
        printer.err.write(f"could not connect to NATS at {url}: {e}\n")
        return 3
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)  # before publishing, so no reply is missed
        js = nc.jetstream()
        target = request_subject(prefix, request.get("tenant"))
        payload = encode(request, content_type)
        try:
            ack = await js.publish(target, payload, timeout=10, headers=request_headers(request, inbox, content_type))
        except (NoRespondersError, NoStreamResponseError):
            printer.err.write(f"no JetStream stream captures {target}: is Triage running (its services create the streams)?\n")
            return 3
        except NatsTimeout:
            printer.err.write(f"JetStream did not confirm the publish to {target} within 10 s\n")
            return 3
        except Exception as e:  # the server's refusal comes as a JetStream API error
            detail = full_stream_refusal(e)
            if detail is None:
                raise
            return printer.handle(queue_full_error(request["id"], detail))
        if ack.duplicate:
            # The stream kept an earlier request with this id and dropped this
            # one: its answer goes to that first submission, none would come here.
            return printer.handle(duplicate_error(request["id"]))
        printer.err.write(f"[request {request['id']} accepted: stream {ack.stream}, seq {ack.seq}; waiting on {inbox}]\n")
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                printer.err.write(f"no final answer within {timeout:.0f} s\n")
                return 2
            try:
                msg = await sub.next_msg(timeout=remaining)
            except NatsTimeout:
                continue
            content = (msg.headers or {}).get(CONTENT_TYPE)
            try:
                reply = decode(msg.data, content)
            except Exception as e:
                printer.err.write(f"[warning: undecodable reply ({content}): {e}]\n")
                continue
            status = printer.handle(reply)
            if status is not None:
                return status
    finally:
        await nc.close()


def parse_metadata(pairs: Iterable[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--metadata wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description="Send one request to Triage over NATS and print the streamed answer.",
        epilog="Message formats: schemas/ in the Triage repository.",
    )
    ap.add_argument("prompt", nargs="?", help="the prompt (or use --messages)")
    ap.add_argument("--messages", help='OpenAI-style messages as JSON, e.g. \'[{"role":"user","content":"hi"}]\'')
    ap.add_argument("--system", help="a system message to put before the prompt")
    ap.add_argument("--nats-url", default=os.environ.get("TRIAGE_NATS_URL", "nats://127.0.0.1:4222"),
                    help="NATS server (env TRIAGE_NATS_URL; default %(default)s)")
    ap.add_argument("--prefix", default="", help="the deployment's subject prefix (default none)")
    ap.add_argument("--id", help="request id, the idempotency key (default: a new UUIDv7)")
    ap.add_argument("--max-tokens", type=int, help="upper bound on generated tokens")
    ap.add_argument("--temperature", type=float, help="sampling temperature")
    ap.add_argument("--no-stream", action="store_true", help="receive only the completion, with the whole text")
    ap.add_argument("--tier", type=int, choices=(1, 2), help="ask for a tier (if the router's policy allows it)")
    ap.add_argument("--tenant", help="who pays: the request goes to llm.requests.<tenant> (1-64 of A-Z a-z 0-9 _ -)")
    ap.add_argument("--user", default=os.environ.get("TRIAGE_NATS_USER"),
                    help="NATS user (default $TRIAGE_NATS_USER; with deploy/nats, the tenant's user)")
    ap.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="free metadata, repeatable")
    ap.add_argument("--deadline", type=float, metavar="SECONDS", help="drop the request if not started within this time")
    ap.add_argument("--json", action="store_true", help="send JSON instead of MessagePack (answers come back in JSON)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the final answer (default %(default)s)")
    ap.add_argument("--print-request", action="store_true", help="print the request as JSON and exit without sending")
    args = ap.parse_args(argv)

    messages = None
    if args.messages:
        try:
            messages = json.loads(args.messages)
        except json.JSONDecodeError as e:
            ap.error(f"--messages is not JSON: {e}")
        if not isinstance(messages, list):
            ap.error("--messages must be a JSON list of {role, content} objects")
    if args.system:
        messages = [{"role": "system", "content": args.system}] + (messages or [])
        if args.prompt:
            messages.append({"role": "user", "content": args.prompt})
            args.prompt = None
    now = int(time.time() * 1000)
    try:
        request = build_request(
            args.prompt,
            messages,
            id=args.id,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            stream=not args.no_stream,
            tier=args.tier,
            tenant=args.tenant,
            metadata=parse_metadata(args.metadata),
            deadline_ms=now + int(args.deadline * 1000) if args.deadline else None,
            submitted_at_ms=now,
        )
        request_subject(args.prefix, args.tenant)
    except (ValueError, argparse.ArgumentTypeError) as e:
        ap.error(str(e))
    if args.print_request:
        print(json.dumps(request, indent=2))
        return 0
    content_type = JSON_MIME if args.json else MSGPACK_MIME
    try:
        return asyncio.run(
            submit(
                args.nats_url,
                request,
                prefix=args.prefix,
                content_type=content_type,
                timeout=args.timeout,
                user=args.user,
                password=os.environ.get("TRIAGE_NATS_PASSWORD"),
            )
        )
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

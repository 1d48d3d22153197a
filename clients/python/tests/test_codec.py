"""The Python client and the Rust protocol types understand each other.

Both directions go through the Rust types themselves, via the protocol
crate's `codec` example (msgpack/json in, the Rust type's re-encoding out):
- Rust → Python: every committed `schemas/examples/*/*.msgpack` (bytes the
  Rust types encoded) decodes in Python to what Rust decodes it to, and the
  client renders the reply examples;
- Python → Rust: requests the client builds, in MessagePack and JSON, decode
  on the Rust side to the same request, and validate against the schema;
  a bad field gives Rust's typed error naming it.

Run: python -m unittest discover -s clients/python/tests
(scripts/test.sh does). Needs cargo; builds the example on first use.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENT_DIR = HERE.parent
ROOT = CLIENT_DIR.parent.parent
SCHEMAS = ROOT / "schemas"
sys.path.insert(0, str(CLIENT_DIR))

import triage_client as tc  # noqa: E402

MESSAGES = ("request", "routed_request", "reply", "usage_event")
_codec_path: str | None = None


def codec_binary() -> str:
    """Builds the protocol crate's codec example once and returns its path."""
    global _codec_path
    if _codec_path is None:
        cargo = shutil.which("cargo")
        if cargo is None:
            raise RuntimeError("cargo is not on PATH: these tests need the Rust toolchain (run scripts/setup.sh)")
        out = subprocess.run(
            [cargo, "build", "-q", "-p", "triage-protocol", "--example", "codec", "--message-format=json"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            check=True,
        ).stdout.decode()
        for line in out.splitlines():
            msg = json.loads(line)
            if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "codec":
                _codec_path = msg["executable"]
        if not _codec_path:
            raise RuntimeError("cargo built no codec executable")
    return _codec_path


def rust(message_type: str, payload: bytes, source: str = "msgpack") -> tuple[int, dict]:
    """Decodes `payload` with the Rust type; returns (status, its JSON re-encoding or the error)."""
    done = subprocess.run(
        [codec_binary(), message_type, "--from", source, "--to", "json"],
        input=payload,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        check=False,
        timeout=30,  # a hung codec fails the test instead of hanging the suite
    )
    if done.returncode not in (0, 3):
        raise RuntimeError(f"codec failed ({done.returncode}): {done.stderr.decode()}")
    return done.returncode, json.loads(done.stdout)


def equivalent(a, b, path="") -> list[str]:
    """Differences between two decoded values; floats compared to f32 precision
    (Rust writes `temperature` as a 32-bit float)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return [] if a is b else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return [] if math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) else [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in equivalent(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in equivalent(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


DEFAULTS = {"version": 1, "stream": True, "n": 1, "keep_result": False, "metadata": {}}


def same_modulo_defaults(sent: dict, decoded: dict) -> list[str]:
    """`decoded` has every field of `sent`, plus only fields at their defaults."""
    problems = []
    for key in sorted(set(sent) | set(decoded)):
        if key in sent and key in decoded:
            problems += equivalent(sent[key], decoded[key], key)
        elif key in decoded and decoded[key] != DEFAULTS.get(key, object()):
            problems.append(f"{key}: Rust added {decoded[key]!r}")
        elif key in sent and sent[key] != DEFAULTS.get(key, object()):
            problems.append(f"{key}: Rust dropped {sent[key]!r}")
    return problems


def example_files(message_type: str) -> list[Path]:
    return sorted((SCHEMAS / "examples" / message_type).glob("*.msgpack"))


class RustToPython(unittest.TestCase):
    def test_every_rust_encoded_example_decodes_in_python_to_what_rust_decodes(self):
        seen = 0
        for message_type in MESSAGES:
            files = example_files(message_type)
            self.assertGreaterEqual(len(files), 2, f"msgpack examples of {message_type}")
            for path in files:
                with self.subTest(example=f"{message_type}/{path.name}"):
                    payload = path.read_bytes()
                    in_python = tc.decode(payload, tc.MSGPACK_MIME)
                    status, in_rust = rust(message_type, payload)
                    self.assertEqual(status, 0, in_rust)
                    self.assertEqual(equivalent(in_python, in_rust), [])
                    # And the JSON example says the same thing.
                    as_json = tc.decode(path.with_suffix(".json").read_bytes(), tc.JSON_MIME)
                    status, from_json = rust(message_type, json.dumps(as_json).encode(), "json")
                    self.assertEqual(equivalent(from_json, in_rust), [])
                    seen += 1
        self.assertGreaterEqual(seen, 8)

    def test_client_renders_rust_encoded_replies(self):
        for path in example_files("reply"):
            with self.subTest(example=path.name):
                reply = tc.decode(path.read_bytes(), tc.MSGPACK_MIME)
                out, err = io.StringIO(), io.StringIO()
                printer = tc.AnswerPrinter(out=out, err=err)
                if reply["type"] == "completion" and reply.get("text") is None:
                    # A streamed answer: the chunks its completion counts come first.
                    for seq in range(reply["chunks"]):
                        delta = "x" * reply.get("text_bytes", 0) if seq == 0 else ""
                        printer.handle({"type": "chunk", "id": reply["id"], "seq": seq, "attempt": reply["attempt"], "delta": delta})
                status = printer.handle(reply)
                if reply["type"] == "chunk":
                    self.assertIsNone(status)
                    self.assertEqual(out.getvalue(), reply["delta"])
                elif reply["type"] == "completion":
                    self.assertEqual(status, 0)
                    self.assertIn(reply["model"], out.getvalue())
                    self.assertIn(f"tier {reply['tier']}", out.getvalue())
                else:
                    self.assertEqual(status, 1)
                    self.assertIn(reply["code"], err.getvalue())
                    self.assertIn(reply["message"], err.getvalue())


def sample_requests() -> list[dict]:
    return [
        tc.build_request("What is the capital of France?"),
        tc.build_request(
            None,
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Prove 2+2=4. ∑ ünïcødé"}],
            id="py-req-1",
            max_tokens=128,
            temperature=0.7,
            tier=2,
            tenant="acme",
            metadata={"team": "search", "priority": 3, "tags": ["a", "b"], "nested": {"x": 1.5}},
            deadline_ms=1_764_082_800_000,
            reply_to="_INBOX.py.1",
            submitted_at_ms=1_764_082_740_000,
        ),
        tc.build_request("batch me", stream=False, keep_result=True, n=1, tenant="batch"),
    ]


class PythonToRust(unittest.TestCase):
    def test_client_requests_decode_in_rust_in_both_encodings(self):
        for request in sample_requests():
            for mime, source in ((tc.MSGPACK_MIME, "msgpack"), (tc.JSON_MIME, "json")):
                with self.subTest(id=request["id"], encoding=source):
                    status, decoded = rust("request", tc.encode(request, mime), source)
                    self.assertEqual(status, 0, decoded)
                    self.assertEqual(same_modulo_defaults(request, decoded), [])

    def test_client_requests_validate_against_the_schema(self):
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource

        resources = []
        for path in SCHEMAS.glob("*.schema.json"):
            schema = json.loads(path.read_text())
            resources.append((schema["$id"], Resource.from_contents(schema)))
        registry = Registry().with_resources(resources)
        schema = json.loads((SCHEMAS / "request.schema.json").read_text())
        validator = Draft202012Validator(schema, registry=registry)
        for request in sample_requests():
            with self.subTest(id=request["id"]):
                errors = [e.message for e in validator.iter_errors(request)]
                self.assertEqual(errors, [])
        # The check can fail: a tier the schema does not allow.
        self.assertFalse(validator.is_valid(dict(sample_requests()[0], tier=3)))

    def test_a_bad_field_gets_rusts_typed_error_naming_it(self):
        bad = dict(tc.build_request("hi"), max_tokens="many")
        status, error = rust("request", tc.encode(bad, tc.MSGPACK_MIME))
        self.assertEqual(status, 3)
        self.assertEqual((error["error"], error["field"]), ("invalid_field", "max_tokens"))
        # The code a Triage service would answer with.
        self.assertEqual(error["code"], "invalid_request")
        status, error = rust("request", tc.encode(dict(tc.build_request("hi"), version=9), tc.JSON_MIME), "json")
        self.assertEqual((status, error["error"], error["code"]), (3, "unsupported_version", "unsupported_version"))


class ClientBehaviour(unittest.TestCase):
    def test_request_needs_input_and_a_valid_tier(self):
        with self.assertRaises(ValueError):
            tc.build_request()
        with self.assertRaises(ValueError):
            tc.build_request("hi", tier=3)
        with self.assertRaises(ValueError):
            tc.build_request(None, [{"content": "no role"}])

    def test_ids_are_uuid7_and_headers_carry_reply_and_trace(self):
        req = tc.build_request("hi")
        self.assertRegex(req["id"], r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        headers = tc.request_headers(req, "_INBOX.abc")
        self.assertEqual(headers["Triage-Reply-To"], "_INBOX.abc")
        self.assertEqual(headers["Content-Type"], "application/msgpack")
        self.assertEqual(headers["Nats-Msg-Id"], "request:_." + req["id"])
        self.assertRegex(headers["traceparent"], r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
        self.assertEqual(tc.subject("acme.", "llm.requests"), "acme.llm.requests")
        self.assertEqual(tc.subject("", "llm.requests"), "llm.requests")

    def test_dedup_ids_are_scoped_by_tenant_like_the_rust_side(self):
        # The same vector as triage_protocol::ids' tests.
        self.assertEqual(tc.request_msg_id({"tenant": "a.b", "id": "x_1é"}), "request:a_2Eb.x_5F1_C3_A9")
        self.assertNotEqual(
            tc.request_msg_id({"tenant": "acme", "id": "r1"}), tc.request_msg_id({"tenant": "globex", "id": "r1"})
        )
        self.assertEqual(tc.key_token(""), "_")
        self.assertNotEqual(tc.key_token("a.b"), tc.key_token("x612e62"))

    def test_printer_restarts_on_a_new_attempt_and_ends_on_the_final_message(self):
        out, err = io.StringIO(), io.StringIO()
        p = tc.AnswerPrinter(out=out, err=err)
        replies = [
            {"type": "chunk", "id": "r", "seq": 0, "attempt": 1, "delta": "Hel"},
            {"type": "chunk", "id": "r", "seq": 0, "attempt": 2, "delta": "Hello"},
            {"type": "chunk", "id": "r", "seq": 1, "attempt": 1, "delta": "STALE"},
            {"type": "chunk", "id": "r", "seq": 1, "attempt": 2, "delta": " world"},
        ]
        self.assertEqual([p.handle(r) for r in replies], [None] * 4)
        final = {
            "type": "completion", "id": "r", "attempt": 2, "finish_reason": "stop", "chunks": 2,
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}, "tier": 1, "model": "m",
            "ttft_ms": 1.0, "total_ms": 2.0,
        }
        self.assertEqual(p.handle(final), 0)
        self.assertIn("[attempt 2: the answer restarts]\nHello world\n", out.getvalue())
        self.assertNotIn("STALE", out.getvalue())
        self.assertEqual(err.getvalue(), "")
        self.assertEqual(tc.AnswerPrinter(out=out, err=err).handle({"type": "error", "code": "internal", "message": "x"}), 1)

    def test_a_lost_or_repeated_chunk_or_a_disagreeing_completion_fails_the_answer(self):
        def chunk(seq, delta="ab", attempt=1):
            return {"type": "chunk", "id": "r", "seq": seq, "attempt": attempt, "delta": delta}

        def done(chunks, text_bytes=None, attempt=1, text=None):
            c = {"type": "completion", "id": "r", "attempt": attempt, "finish_reason": "stop", "chunks": chunks,
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "tier": 1, "model": "m",
                 "ttft_ms": 1.0, "total_ms": 2.0}
            if text_bytes is not None:
                c["text_bytes"] = text_bytes
            if text is not None:
                c["text"] = text
            return c

        cases = {
            "gap": ([chunk(0), chunk(2)], "was due (a chunk was lost)"),
            "first chunk lost": ([chunk(1)], "chunk 1 of attempt 1 came where chunk 0 was due"),
            "repeat": ([chunk(0), chunk(1), chunk(1)], "came again"),
            "count": ([chunk(0), done(2, 4)], "says 2 chunks were sent, 1 arrived"),
            "length": ([chunk(0, "é"), done(1, 3)], "says 3 bytes of text, 2 arrived"),
            "kept text cut": ([done(0, 9, text="short")], "says 9 bytes of text, 5 arrived"),
        }
        for name, (replies, detail) in cases.items():
            with self.subTest(name):
                out, err = io.StringIO(), io.StringIO()
                p = tc.AnswerPrinter(out=out, err=err)
                statuses = [p.handle(r) for r in replies]
                self.assertEqual(statuses[-1], 1, "the answer fails")
                self.assertIn("error stream_incomplete", err.getvalue())
                self.assertIn(detail, err.getvalue())
        # Whole answers pass: UTF-8 lengths, a restart, and an older worker without text_bytes.
        good = [chunk(0, "x"), chunk(0, "é", attempt=2), chunk(1, "!", attempt=2), chunk(1, "late"), done(2, 3, attempt=2)]
        p = tc.AnswerPrinter(out=io.StringIO(), err=io.StringIO())
        self.assertEqual([p.handle(r) for r in good][-1], 0)
        p = tc.AnswerPrinter(out=io.StringIO(), err=io.StringIO())
        self.assertEqual([p.handle(r) for r in (chunk(0), done(1))][-1], 0)

    def test_a_full_request_queue_is_a_queue_full_error(self):
        class ServerError(Exception):
            def __init__(self, err_code, description):
                super().__init__(description)
                self.err_code, self.description = err_code, description

        self.assertEqual(tc.full_stream_refusal(ServerError(10077, "maximum messages exceeded")), "maximum messages exceeded")
        self.assertEqual(tc.full_stream_refusal(ServerError(10077, "maximum bytes exceeded")), "maximum bytes exceeded")
        self.assertIsNone(tc.full_stream_refusal(ServerError(10077, "disk failure")))
        self.assertIsNone(tc.full_stream_refusal(ServerError(10059, "stream not found")))
        self.assertIsNone(tc.full_stream_refusal(ValueError("x")))
        err = io.StringIO()
        status = tc.AnswerPrinter(out=io.StringIO(), err=err).handle(tc.queue_full_error("r1", "maximum messages exceeded"))
        self.assertEqual(status, 1)
        self.assertIn("error queue_full: request r1 was not accepted", err.getvalue())
        self.assertIn("(retryable)", err.getvalue())

    def test_decode_follows_the_content_type(self):
        self.assertEqual(tc.decode(b'{"a":1}', "application/json; charset=utf-8"), {"a": 1})
        self.assertEqual(tc.decode(tc.encode({"a": 1}), None), {"a": 1})
        with self.assertRaises(ValueError):
            tc.decode(tc.encode([1, 2]), tc.MSGPACK_MIME)


class TenantSubjects(unittest.TestCase):
    def test_a_tenants_request_goes_to_its_own_subject_and_inboxes(self):
        self.assertEqual(tc.request_subject("", "acme"), "llm.requests.acme")
        self.assertEqual(tc.request_subject("staging", None), "staging.llm.requests")
        self.assertEqual(tc.inbox_prefix("acme"), "_INBOX.acme")
        self.assertEqual(tc.inbox_prefix(None), "_INBOX")
        for bad in ["", "a.b", "a b", "*", "x" * 65]:
            with self.assertRaisesRegex(ValueError, "tenant", msg=bad):
                tc.request_subject("", bad)

    def test_a_bad_tenant_is_a_usage_error(self):
        with contextlib.redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit) as exit:
            tc.main(["--tenant", "a.b", "hi"])
        self.assertEqual(exit.exception.code, 2)
        self.assertIn("tenant 'a.b'", err.getvalue())


if __name__ == "__main__":
    unittest.main()

// The client's own behaviour, without servers: request building, headers,
// subjects, decoding by content type, and putting replies together across
// attempt resets.

import { test } from "node:test";
import assert from "node:assert/strict";

import * as tc from "../triage_client.mjs";

test("a request needs input, a valid tier and well-formed messages", () => {
  assert.throws(() => tc.buildRequest({}), /prompt or messages/);
  assert.throws(() => tc.buildRequest({ prompt: "hi", tier: 3 }), /tier must be 1 or 2/);
  assert.throws(() => tc.buildRequest({ messages: [{ content: "no role" }] }), /string role and content/);
  assert.throws(() => tc.buildRequest({ prompt: "hi", maxTokens: -1 }), /maxTokens/);
});

test("ids are UUIDv7 and headers carry the reply subject, the id and a trace", () => {
  const req = tc.buildRequest({ prompt: "hi" });
  assert.match(req.id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  // The time prefix is now, to the millisecond.
  const ms = Number.parseInt(req.id.replaceAll("-", "").slice(0, 12), 16);
  assert.ok(Math.abs(ms - Date.now()) < 60_000);
  const h = tc.requestHeaders(req, "_INBOX.abc");
  assert.equal(h["Triage-Reply-To"], "_INBOX.abc");
  assert.equal(h["Content-Type"], "application/msgpack");
  assert.equal(h["Nats-Msg-Id"], req.id);
  assert.match(h.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  assert.equal(tc.subject("acme.", "llm.requests"), "acme.llm.requests");
  assert.equal(tc.subject("", "llm.requests"), "llm.requests");
});

test("decode follows the content type and wants a map", () => {
  assert.deepEqual(tc.decode(new TextEncoder().encode('{"a":1}'), "application/json; charset=utf-8"), { a: 1 });
  assert.deepEqual(tc.decode(tc.encode({ a: 1 }), undefined), { a: 1 });
  assert.throws(() => tc.decode(tc.encode([1, 2]), tc.MSGPACK_MIME), /map at the top level/);
});

test("a new attempt restarts the text; late chunks of an old attempt are ignored", () => {
  const a = new tc.Answer();
  const steps = [
    { type: "chunk", id: "r", seq: 0, attempt: 1, delta: "Hel" },
    { type: "chunk", id: "r", seq: 0, attempt: 2, delta: "Hello" },
    { type: "chunk", id: "r", seq: 1, attempt: 1, delta: "STALE" },
    { type: "chunk", id: "r", seq: 1, attempt: 2, delta: " world" },
  ].map((r) => a.push(r));
  assert.deepEqual(
    steps.map((s) => s.kind),
    ["delta", "delta", "ignored", "delta"],
  );
  assert.equal(steps[1].restarted, true);
  assert.equal(a.restarts, 1);
  const final = {
    type: "completion",
    id: "r",
    attempt: 2,
    finish_reason: "stop",
    chunks: 2,
    usage: { prompt_tokens: 3, completion_tokens: 2 },
    tier: 1,
    model: "m",
    ttft_ms: 1.0,
    total_ms: 2.0,
  };
  assert.equal(a.push(final).kind, "completion");
  assert.equal(a.text, "Hello world");
  assert.deepEqual(a.warnings, []);
  assert.match(tc.summary(final), /^\[tier 1; model m; finish stop; tokens 3\+2; .*attempt 2\]$/);
});

test("a gap in seq or a short chunk count is reported, not hidden", () => {
  const a = new tc.Answer();
  a.push({ type: "chunk", seq: 0, attempt: 1, delta: "a" });
  a.push({ type: "chunk", seq: 2, attempt: 1, delta: "c" });
  a.push({ type: "completion", attempt: 1, chunks: 3, usage: {} });
  assert.deepEqual(a.warnings, ["expected chunk 1, got 2", "completion says 3 chunks, received 2"]);
});

test("an error reply is final", () => {
  const a = new tc.Answer();
  const step = a.push({ type: "error", id: "r", code: "internal", message: "x" });
  assert.equal(step.kind, "error");
  assert.equal(a.final.code, "internal");
});

test("the command line builds the request it prints", () => {
  const cli = tc.parseCommandLine(["--system", "Be brief.", "--max-tokens", "8", "--tier", "1", "--json", "hi"], {});
  assert.deepEqual(cli.request.messages, [
    { role: "system", content: "Be brief." },
    { role: "user", content: "hi" },
  ]);
  assert.equal(cli.request.max_tokens, 8);
  assert.equal(cli.request.tier, 1);
  assert.equal(cli.contentType, tc.JSON_MIME);
  assert.equal(cli.url, "nats://127.0.0.1:4222");
  assert.throws(() => tc.parseCommandLine(["--max-tokens", "lots", "hi"], {}), /--max-tokens wants a number/);
  assert.throws(() => tc.parseCommandLine(["--messages", "{oops", "hi"], {}), /--messages is not JSON/);
});

test("a tenant's request goes to its own subject and inboxes; a bad tenant is refused", () => {
  assert.equal(tc.requestSubject("", "acme"), "llm.requests.acme");
  assert.equal(tc.requestSubject("staging", undefined), "staging.llm.requests");
  assert.equal(tc.inboxPrefix("acme"), "_INBOX.acme");
  assert.equal(tc.inboxPrefix(undefined), "_INBOX");
  for (const bad of ["", "a.b", "a b", "*", "x".repeat(65)]) {
    assert.throws(() => tc.requestSubject("", bad), /tenant/, bad);
  }
  assert.throws(() => tc.parseCommandLine(["--tenant", "a.b", "hi"], {}), /tenant "a\.b"/);
  const cli = tc.parseCommandLine(["--tenant", "acme", "--user", "acme", "hi"], { TRIAGE_NATS_PASSWORD: "pw" });
  assert.equal(cli.user, "acme");
  assert.equal(cli.password, "pw");
});

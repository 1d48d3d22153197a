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
  assert.equal(h["Nats-Msg-Id"], `request:_.${req.id}`);
  assert.match(h.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  assert.equal(tc.subject("acme.", "llm.requests"), "acme.llm.requests");
  assert.equal(tc.subject("", "llm.requests"), "llm.requests");
});

test("de-duplication ids are scoped by tenant like the Rust side", () => {
  // The same vector as triage_protocol::ids' tests.
  assert.equal(tc.requestMsgId({ tenant: "a.b", id: "x_1é" }), "request:a_2Eb.x_5F1_C3_A9");
  assert.notEqual(tc.requestMsgId({ tenant: "acme", id: "r1" }), tc.requestMsgId({ tenant: "globex", id: "r1" }));
  assert.equal(tc.keyToken(""), "_");
  assert.notEqual(tc.keyToken("a.b"), tc.keyToken("x612e62"));
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

const chunk = (seq, delta = "ab", attempt = 1) => ({ type: "chunk", id: "r", seq, attempt, delta });
const done = (chunks, textBytes, { attempt = 1, text } = {}) => ({
  type: "completion",
  id: "r",
  attempt,
  finish_reason: "stop",
  chunks,
  ...(textBytes === undefined ? {} : { text_bytes: textBytes }),
  ...(text === undefined ? {} : { text }),
  usage: { prompt_tokens: 1, completion_tokens: 1 },
  tier: 1,
  model: "m",
  ttft_ms: 1,
  total_ms: 2,
});

test("a lost or repeated chunk, or a completion that disagrees, fails the answer with stream_incomplete", () => {
  const cases = {
    gap: [[chunk(0), chunk(2)], "came where chunk 1 was due (a chunk was lost)"],
    "first chunk lost": [[chunk(1)], "chunk 1 of attempt 1 came where chunk 0 was due"],
    repeat: [[chunk(0), chunk(1), chunk(1)], "came again"],
    count: [[chunk(0), done(2, 4)], "says 2 chunks were sent, 1 arrived"],
    length: [[chunk(0, "é"), done(1, 3)], "says 3 bytes of text, 2 arrived"],
    "kept text cut": [[done(0, 9, { text: "short" })], "says 9 bytes of text, 5 arrived"],
  };
  for (const [name, [replies, detail]] of Object.entries(cases)) {
    const a = new tc.Answer();
    const last = replies.map((r) => a.push(r)).at(-1);
    assert.equal(last.kind, "error", name);
    assert.equal(a.final.code, "stream_incomplete", name);
    assert.ok(a.final.message.includes(detail), `${name}: ${a.final.message}`);
    assert.equal(a.text, "", `${name}: no wrong text`);
  }
});

test("whole answers pass the check: UTF-8 lengths, restarts, kept text, older workers", () => {
  let a = new tc.Answer();
  for (const r of [chunk(0, "x"), chunk(0, "é", 2), chunk(1, "!", 2), chunk(1, "late"), done(2, 3, { attempt: 2 })]) {
    a.push(r);
  }
  assert.equal(a.final.type, "completion");
  assert.equal(a.text, "é!");
  a = new tc.Answer();
  a.push(chunk(0, "void"));
  const step = a.push(done(4, 5, { attempt: 2, text: "whole" }));
  assert.equal(step.textInCompletion, true);
  assert.equal(a.text, "whole");
  a = new tc.Answer();
  a.push(chunk(0));
  assert.equal(a.push(done(1)).kind, "completion", "no text_bytes: only the count is checked");
});

test("a full request queue is a queue_full error", () => {
  const apiError = (err_code, description) => Object.assign(new Error("503"), { api_error: { code: 503, err_code, description } });
  assert.equal(tc.fullStreamRefusal(apiError(10077, "maximum messages exceeded")), "maximum messages exceeded");
  assert.equal(tc.fullStreamRefusal(apiError(10077, "maximum bytes exceeded")), "maximum bytes exceeded");
  assert.equal(tc.fullStreamRefusal(apiError(10077, "disk failure")), null);
  assert.equal(tc.fullStreamRefusal(apiError(10059, "stream not found")), null);
  assert.equal(tc.fullStreamRefusal(new Error("timeout")), null);
  const e = tc.queueFullError("r1", "maximum messages exceeded");
  assert.equal(e.code, "queue_full");
  assert.equal(e.retryable, true);
  assert.match(e.message, /request r1 was not accepted, the request queue is full/);
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

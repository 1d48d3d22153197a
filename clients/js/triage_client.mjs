#!/usr/bin/env node
// Triage example client for JavaScript: publishes one request to
// `llm.requests` (with --tenant, `llm.requests.<tenant>`) through NATS JetStream and prints the answer as it streams
// in, then the completion (tier, model, tokens, timings, routing reasons) or
// the error. The proof that a Node.js service can use Triage with the npm
// `nats` package and a MessagePack library; formats in ../../schemas/.
//
//   node triage_client.mjs "What is the capital of France?"
//   node triage_client.mjs --system "Answer briefly." --max-tokens 64 --tenant acme "Why is the sky blue?"
//   node triage_client.mjs --messages '[{"role":"user","content":"hi"}]' --json
//
// With deploy/nats permissions, connect as the tenant's NATS user: --user
// acme (or TRIAGE_NATS_USER) and TRIAGE_NATS_PASSWORD; answers then arrive on
// `_INBOX.<tenant>.*`, the only inboxes that user may read.
//
// Exit status: 0 completion, 1 error reply, 2 no final answer within the
// timeout, 3 could not submit (NATS down, no stream: start Triage first).

import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { realpathSync } from "node:fs";

import { encode as packMsgpack, decode as unpackMsgpack } from "@msgpack/msgpack";

export const SCHEMA_VERSION = 1;
export const MSGPACK_MIME = "application/msgpack";
export const JSON_MIME = "application/json";
// Header names, as in services/protocol/src/headers.rs.
export const CONTENT_TYPE = "Content-Type";
export const REPLY_TO = "Triage-Reply-To";
export const MSG_ID = "Nats-Msg-Id";
export const TRACEPARENT = "traceparent";

/** A UUIDv7 (time-ordered), the id Triage itself would assign. */
export function uuid7() {
  const b = randomBytes(16);
  const ms = BigInt(Date.now());
  for (let i = 0; i < 6; i++) b[i] = Number((ms >> BigInt(8 * (5 - i))) & 0xffn);
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A W3C trace context header starting a new, sampled trace. */
export function newTraceparent() {
  return `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`;
}

/**
 * A request as in schemas/request.schema.json. Optional fields left at their
 * defaults are omitted (Triage fills them in); `id` defaults to a fresh
 * UUIDv7, the idempotency key. Throws a TypeError naming the bad field.
 */
export function buildRequest({
  prompt,
  messages,
  id,
  maxTokens,
  temperature,
  stream = true,
  n = 1,
  tier,
  tenant,
  metadata,
  deadlineMs,
  replyTo,
  keepResult = false,
  submittedAtMs,
} = {}) {
  if (!prompt && !(messages && messages.length)) {
    throw new TypeError("a request needs a prompt or messages");
  }
  for (const m of messages ?? []) {
    if (typeof m?.role !== "string" || typeof m?.content !== "string") {
      throw new TypeError(`each message needs a string role and content, got ${JSON.stringify(m)}`);
    }
  }
  if (tier !== undefined && tier !== 1 && tier !== 2) {
    throw new TypeError(`tier must be 1 or 2, got ${tier}`);
  }
  for (const [name, v] of [["maxTokens", maxTokens], ["n", n], ["deadlineMs", deadlineMs], ["submittedAtMs", submittedAtMs]]) {
    if (v !== undefined && !(Number.isInteger(v) && v >= 0)) {
      throw new TypeError(`${name} must be a non-negative integer, got ${v}`);
    }
  }
  const req = { version: SCHEMA_VERSION, id: id ?? uuid7() };
  if (messages && messages.length) req.messages = messages.map((m) => ({ role: m.role, content: m.content }));
  if (prompt) req.prompt = prompt;
  const optional = {
    max_tokens: maxTokens,
    temperature,
    tier,
    tenant,
    deadline_ms: deadlineMs,
    reply_to: replyTo,
    submitted_at_ms: submittedAtMs,
  };
  for (const [k, v] of Object.entries(optional)) if (v !== undefined && v !== null) req[k] = v;
  if (!stream) req.stream = false;
  if (n !== 1) req.n = n;
  if (metadata && Object.keys(metadata).length) req.metadata = { ...metadata };
  if (keepResult) req.keep_result = true;
  return req;
}

/** MessagePack with named fields (a map), or JSON. */
export function encode(message, contentType = MSGPACK_MIME) {
  if (contentType === JSON_MIME) return new TextEncoder().encode(JSON.stringify(message));
  // Whole numbers stay integers; `temperature` and other floats stay floats.
  return packMsgpack(message, { forceIntegerToFloat: false });
}

/** Decodes by `Content-Type` as Triage does: JSON only when it says so. */
export function decode(payload, contentType) {
  const mime = (contentType ?? "").split(";")[0].trim().toLowerCase();
  const value = mime === JSON_MIME ? JSON.parse(new TextDecoder().decode(payload)) : unpackMsgpack(payload);
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new TypeError(`expected a map at the top level, got ${Array.isArray(value) ? "array" : typeof value}`);
  }
  return value;
}

/**
 * Headers for publishing `request`: encoding, where to answer (JetStream
 * messages have no reply subject of their own), the request id as
 * JetStream's de-duplication key, and a new trace. A plain object; the
 * caller turns it into NATS headers.
 */
export function requestHeaders(request, replyTo, contentType = MSGPACK_MIME) {
  return {
    [CONTENT_TYPE]: contentType,
    [REPLY_TO]: replyTo,
    [MSG_ID]: request.id,
    [TRACEPARENT]: newTraceparent(),
  };
}

/** A Triage subject under the deployment prefix, if any. */
export function subject(prefix, base) {
  const p = (prefix ?? "").trim().replace(/\.+$/, "");
  return p ? `${p}.${base}` : base;
}

const TENANT_TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Where a request goes: `llm.requests.<tenant>` binds it to the tenant (the
 * router takes the tenant from the subject; deploy/nats lets each client
 * user publish only its own), plain `llm.requests` without one.
 */
export function requestSubject(prefix, tenant) {
  if (tenant === undefined || tenant === null) return subject(prefix, "llm.requests");
  if (!TENANT_TOKEN.test(tenant)) {
    throw new TypeError(`tenant ${JSON.stringify(tenant)}: use 1 to 64 letters, digits, '-' or '_' (it is a subject token)`);
  }
  return subject(prefix, `llm.requests.${tenant}`);
}

/** `_INBOX.<tenant>`: the only inboxes a client user may read under deploy/nats. */
export function inboxPrefix(tenant) {
  return tenant ? `_INBOX.${tenant}` : "_INBOX";
}

/**
 * Puts one request's replies together: the text of the current attempt
 * (a chunk of a higher attempt voids everything before it; chunks of an
 * older attempt are ignored), a check that `seq` has no gap or repeat within
 * an attempt, and the final completion or error.
 */
export class Answer {
  constructor() {
    this.attempt = 0;
    this.nextSeq = 0;
    this.parts = [];
    this.restarts = 0;
    this.final = null;
    this.warnings = [];
  }

  get text() {
    return this.parts.join("");
  }

  /**
   * Takes one decoded reply. Returns what a printer should do:
   * `{ kind: "delta", delta, restarted }`, `{ kind: "ignored" }`, or
   * `{ kind: "completion" | "error", reply }` once the answer is final.
   */
  push(reply) {
    switch (reply.type) {
      case "chunk":
        return this.#chunk(reply);
      case "completion":
      case "error":
        this.final = reply;
        if (reply.type === "completion") this.#checkCount(reply);
        return { kind: reply.type, reply };
      default:
        this.warnings.push(`ignoring a reply of unknown type ${JSON.stringify(reply.type)}`);
        return { kind: "ignored" };
    }
  }

  #chunk(reply) {
    const attempt = Number(reply.attempt ?? 1);
    if (attempt < this.attempt) return { kind: "ignored" }; // a late chunk of a void attempt
    let restarted = false;
    if (attempt > this.attempt) {
      restarted = this.parts.length > 0;
      if (restarted) this.restarts += 1;
      this.attempt = attempt;
      this.nextSeq = 0;
      this.parts = [];
    }
    const seq = Number(reply.seq ?? 0);
    if (seq !== this.nextSeq) this.warnings.push(`expected chunk ${this.nextSeq}, got ${seq}`);
    this.nextSeq = seq + 1;
    const delta = String(reply.delta ?? "");
    this.parts.push(delta);
    return { kind: "delta", delta, restarted };
  }

  #checkCount(reply) {
    const expected = Number(reply.chunks ?? 0);
    if (expected && Number(reply.attempt ?? 1) === this.attempt && expected !== this.parts.length) {
      this.warnings.push(`completion says ${expected} chunks, received ${this.parts.length}`);
    }
  }
}

/** The one-line summary of a completion. */
export function summary(completion) {
  const usage = completion.usage ?? {};
  const routing = completion.routing ?? {};
  const parts = [
    `tier ${completion.tier}`,
    `model ${completion.model}`,
    `finish ${completion.finish_reason}`,
    `tokens ${usage.prompt_tokens}+${usage.completion_tokens}${usage.estimated ? " (estimated)" : ""}`,
    `ttft ${Math.round(Number(completion.ttft_ms ?? 0))} ms`,
    `total ${Math.round(Number(completion.total_ms ?? 0))} ms`,
    `attempt ${completion.attempt}`,
  ];
  if (routing.score !== undefined) parts.push(`score ${routing.score}`);
  if (routing.reasons?.length) parts.push(`reasons ${routing.reasons.join(",")}`);
  return `[${parts.join("; ")}]`;
}

/**
 * Publishes `request` through JetStream and yields each decoded reply until
 * the final one. Subscribes to a fresh inbox before publishing, so no reply
 * is missed. Throws a `SubmitError` when the request is not accepted, and
 * a `TimeoutError` when no final answer arrives in `timeoutMs`.
 */
export async function* submit(nc, request, { prefix = "", contentType = MSGPACK_MIME, timeoutMs = 120_000 } = {}) {
  const { headers: natsHeaders, createInbox } = await import("nats");
  const target = requestSubject(prefix, request.tenant);
  const inbox = createInbox(inboxPrefix(request.tenant));
  const sub = nc.subscribe(inbox);
  // One deadline for the whole answer, not per message.
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    sub.unsubscribe();
  }, timeoutMs);
  try {
    const h = natsHeaders();
    for (const [k, v] of Object.entries(requestHeaders(request, inbox, contentType))) h.set(k, v);
    let ack;
    try {
      ack = await nc.jetstream().publish(target, encode(request, contentType), { headers: h, timeout: 10_000 });
    } catch (e) {
      throw new SubmitError(
        `JetStream did not accept the request on ${target}: ${e.message} (is Triage running? its services create the streams)`,
      );
    }
    if (ack.duplicate) {
      // The stream kept an earlier request with this id and dropped this one:
      // its answer goes to that first submission, none would come here.
      yield duplicateError(request.id);
      return;
    }
    for await (const msg of sub) {
      let reply;
      try {
        reply = decode(msg.data, msg.headers?.get(CONTENT_TYPE));
      } catch {
        continue; // not a reply of ours: skip it, keep waiting
      }
      yield reply;
      if (reply.type === "completion" || reply.type === "error") return;
    }
  } finally {
    clearTimeout(timer);
    sub.unsubscribe();
  }
  throw new TimeoutError(timedOut ? `no final answer within ${timeoutMs / 1000} s` : "the reply subscription ended before the final answer");
}

/** The error a client reports when JetStream de-duplicated its publish. */
export function duplicateError(id) {
  return {
    type: "error",
    id,
    code: "duplicate_request",
    message:
      `request ${id} was already accepted (the stream de-duplicated this submission by its id); ` +
      "its answer goes to the first submission: send a new request with a new id",
    retryable: false,
  };
}

export class SubmitError extends Error {}
export class TimeoutError extends Error {}

const USAGE = `usage: triage_client.mjs [options] PROMPT
  --messages JSON      OpenAI-style messages, e.g. '[{"role":"user","content":"hi"}]'
  --system TEXT        a system message before the prompt
  --nats-url URL       NATS server (env TRIAGE_NATS_URL; default nats://127.0.0.1:4222)
  --prefix P           the deployment's subject prefix (default none)
  --id ID              request id, the idempotency key (default: a new UUIDv7)
  --max-tokens N       upper bound on generated tokens
  --temperature T      sampling temperature
  --no-stream          receive only the completion, with the whole text
  --tier 1|2           ask for a tier (if the router's policy allows it)
  --tenant T           who pays: the request goes to llm.requests.<tenant>
  --user U             NATS user (env TRIAGE_NATS_USER; password in env TRIAGE_NATS_PASSWORD)
  --json               send JSON instead of MessagePack
  --timeout SECONDS    wait this long for the final answer (default 120)
  --print-request      print the request as JSON and exit without sending`;

/** Parses the command line into a request and options; throws on bad input. */
export function parseCommandLine(argv, env = process.env) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      messages: { type: "string" },
      system: { type: "string" },
      "nats-url": { type: "string", default: env.TRIAGE_NATS_URL ?? "nats://127.0.0.1:4222" },
      prefix: { type: "string", default: "" },
      id: { type: "string" },
      "max-tokens": { type: "string" },
      temperature: { type: "string" },
      "no-stream": { type: "boolean", default: false },
      tier: { type: "string" },
      tenant: { type: "string" },
      user: { type: "string", default: env.TRIAGE_NATS_USER },
      json: { type: "boolean", default: false },
      timeout: { type: "string", default: "120" },
      "print-request": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  const number = (name, parse) => {
    if (values[name] === undefined) return undefined;
    const v = parse(values[name]);
    if (Number.isNaN(v)) throw new TypeError(`--${name} wants a number, got ${JSON.stringify(values[name])}`);
    return v;
  };
  let messages;
  if (values.messages) {
    try {
      messages = JSON.parse(values.messages);
    } catch (e) {
      throw new TypeError(`--messages is not JSON: ${e.message}`);
    }
    if (!Array.isArray(messages)) throw new TypeError("--messages must be a JSON list of {role, content} objects");
  }
  let prompt = positionals.join(" ") || undefined;
  if (values.system) {
    messages = [{ role: "system", content: values.system }, ...(messages ?? [])];
    if (prompt) messages.push({ role: "user", content: prompt });
    prompt = undefined;
  }
  const request = values.help
    ? null
    : buildRequest({
        prompt,
        messages,
        id: values.id,
        maxTokens: number("max-tokens", (s) => Number.parseInt(s, 10)),
        temperature: number("temperature", Number.parseFloat),
        stream: !values["no-stream"],
        tier: number("tier", (s) => Number.parseInt(s, 10)),
        tenant: values.tenant,
        submittedAtMs: Date.now(),
      });
  if (request) requestSubject(values.prefix, request.tenant);
  return {
    help: values.help,
    request,
    user: values.user,
    password: env.TRIAGE_NATS_PASSWORD,
    url: values["nats-url"],
    prefix: values.prefix,
    contentType: values.json ? JSON_MIME : MSGPACK_MIME,
    timeoutMs: number("timeout", Number.parseFloat) * 1000,
    printRequest: values["print-request"],
  };
}

async function main(argv) {
  let cli;
  try {
    cli = parseCommandLine(argv);
  } catch (e) {
    process.stderr.write(`${e.message}\n${USAGE}\n`);
    return 64;
  }
  if (cli.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (cli.printRequest) {
    process.stdout.write(`${JSON.stringify(cli.request, null, 2)}\n`);
    return 0;
  }
  const { connect } = await import("nats");
  let nc;
  try {
    nc = await connect({
      servers: cli.url,
      name: "triage-js-client",
      timeout: 5000,
      maxReconnectAttempts: 2,
      user: cli.user,
      pass: cli.password,
      inboxPrefix: inboxPrefix(cli.request.tenant),
    });
  } catch (e) {
    process.stderr.write(`could not connect to NATS at ${cli.url}: ${e.message}\n`);
    return 3;
  }
  try {
    return await printAnswer(nc, cli);
  } finally {
    await nc.close();
  }
}

async function printAnswer(nc, cli) {
  const answer = new Answer();
  try {
    for await (const reply of submit(nc, cli.request, cli)) {
      const step = answer.push(reply);
      if (step.kind === "delta") {
        if (step.restarted) process.stdout.write(`\n[attempt ${answer.attempt}: the answer restarts]\n`);
        process.stdout.write(step.delta);
      } else if (step.kind === "completion") {
        if (reply.text && !answer.text) process.stdout.write(reply.text);
        process.stdout.write(`\n${summary(reply)}\n`);
      } else if (step.kind === "error") {
        const retry = reply.retryable ? "retryable" : "not retryable";
        process.stderr.write(`\nerror ${reply.code}: ${reply.message} (${retry})\n`);
      }
    }
  } catch (e) {
    process.stderr.write(`${e.message}\n`);
    return e instanceof SubmitError ? 3 : 2;
  } finally {
    for (const w of answer.warnings) process.stderr.write(`[warning: ${w}]\n`);
  }
  if (!answer.final) return 2;
  return answer.final.type === "completion" ? 0 : 1;
}

const invokedDirectly = process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
if (invokedDirectly) {
  process.exitCode = await main(process.argv.slice(2));
}

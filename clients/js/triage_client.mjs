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
 * `s` as one subject/key token, injectively: letters, digits and `-` kept,
 * every other byte `_XX` (upper-case hex), the empty string `_`. The same
 * rule as triage_protocol::ids::key_token.
 */
export function keyToken(s) {
  if (!s) return "_";
  let out = "";
  for (const b of new TextEncoder().encode(s)) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9-]/.test(c) ? c : `_${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** JetStream's de-duplication key of a request: its id within its tenant. */
export function requestMsgId(request) {
  return `request:${keyToken(request.tenant ?? "")}.${keyToken(request.id)}`;
}

/**
 * Headers for publishing `request`: encoding, where to answer (JetStream
 * messages have no reply subject of their own), the tenant-scoped request
 * id as JetStream's de-duplication key, and a new trace. A plain object;
 * the caller turns it into NATS headers.
 */
export function requestHeaders(request, replyTo, contentType = MSGPACK_MIME) {
  return {
    [CONTENT_TYPE]: contentType,
    [REPLY_TO]: replyTo,
    [MSG_ID]: requestMsgId(request),
    [TRACEPARENT]: newTraceparent(),
  };
}

/** A Triage subject under the deployment prefix, if any. */
export function subject(prefix, base) {
  const p = (prefix ?? "").trim().replace(/\.+$/, "");
  return p ? `${p}.${base}` : base;
}

/** The answer did not arrive whole: its text would be wrong. */
export class IncompleteAnswer extends Error {}

/**
 * Checks that a streamed answer arrived whole, by the rules of
 * triage_protocol::AnswerCheck (schemas/README.md): within an attempt `seq`
 * counts from 0 without a gap or repeat; a higher attempt restarts the count
 * (the earlier text is void), a lower one is stale; the completion's
 * `chunks` and `text_bytes` must match what arrived of its attempt.
 */
export class AnswerCheck {
  constructor() {
    this.attempt = null;
    this.chunks = 0;
    this.bytes = 0;
  }

  /**
   * `null` for a stale chunk (ignore it), else whether it restarts the
   * answer. Throws IncompleteAnswer on a gap or repeat.
   */
  chunk(reply) {
    const attempt = Number(reply.attempt ?? 1);
    const seq = Number(reply.seq ?? 0);
    if (this.attempt !== null && attempt < this.attempt) return null;
    let restarted = false;
    if (attempt !== this.attempt) {
      restarted = this.attempt !== null && this.chunks > 0;
      [this.attempt, this.chunks, this.bytes] = [attempt, 0, 0];
    }
    if (seq < this.chunks) {
      throw new IncompleteAnswer(`chunk ${seq} of attempt ${attempt} came again after chunk ${this.chunks - 1} (a chunk repeated)`);
    }
    if (seq > this.chunks) {
      throw new IncompleteAnswer(`chunk ${seq} of attempt ${attempt} came where chunk ${this.chunks} was due (a chunk was lost)`);
    }
    this.chunks += 1;
    this.bytes += utf8Length(String(reply.delta ?? ""));
    return restarted;
  }

  /**
   * Where the answer's text is: "streamed" (the chunks) or "in_completion"
   * (its `text`). Throws IncompleteAnswer when the completion disagrees with
   * what arrived.
   */
  completion(reply) {
    const attempt = Number(reply.attempt ?? 1);
    let [chunks, received] = attempt === this.attempt ? [this.chunks, this.bytes] : [0, 0];
    let source = "streamed";
    if (reply.text !== undefined && reply.text !== null && chunks === 0) {
      [source, received] = ["in_completion", utf8Length(String(reply.text))];
    } else {
      const sent = Number(reply.chunks ?? 0);
      if (sent !== chunks) {
        throw new IncompleteAnswer(`the completion of attempt ${attempt} says ${sent} chunks were sent, ${chunks} arrived`);
      }
    }
    if (reply.text_bytes !== undefined && reply.text_bytes !== null && Number(reply.text_bytes) !== received) {
      throw new IncompleteAnswer(`the completion of attempt ${attempt} says ${reply.text_bytes} bytes of text, ${received} arrived`);
    }
    return source;
  }
}

function utf8Length(text) {
  return Buffer.byteLength(text, "utf8");
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
 * older attempt are ignored), checked by AnswerCheck, and the final
 * completion or error. An answer that did not arrive whole ends with the
 * error `stream_incomplete`, never with wrong text.
 */
export class Answer {
  constructor() {
    this.check = new AnswerCheck();
    this.parts = [];
    this.restarts = 0;
    this.final = null;
    this.warnings = [];
  }

  get attempt() {
    return this.check.attempt ?? 0;
  }

  get text() {
    return this.parts.join("");
  }

  /**
   * Takes one decoded reply. Returns what a printer should do:
   * `{ kind: "delta", delta, restarted }`, `{ kind: "ignored" }`, or
   * `{ kind: "completion" | "error", reply }` once the answer is final (a
   * completion says `textInCompletion` when its `text` is the answer).
   */
  push(reply) {
    try {
      switch (reply.type) {
        case "chunk":
          return this.#chunk(reply);
        case "completion": {
          const inCompletion = this.check.completion(reply) === "in_completion";
          if (inCompletion) this.parts = [String(reply.text)];
          return { ...this.#finish(reply), textInCompletion: inCompletion };
        }
        case "error":
          return this.#finish(reply);
        default:
          this.warnings.push(`ignoring a reply of unknown type ${JSON.stringify(reply.type)}`);
          return { kind: "ignored" };
      }
    } catch (e) {
      if (!(e instanceof IncompleteAnswer)) throw e;
      this.parts = [];
      return this.#finish(incompleteError(reply.id ?? "", e.message));
    }
  }

  #finish(reply) {
    this.final = reply;
    return { kind: reply.type, reply };
  }

  #chunk(reply) {
    const restarted = this.check.chunk(reply);
    if (restarted === null) return { kind: "ignored" }; // a late chunk of a void attempt
    if (restarted) {
      this.restarts += 1;
      this.parts = [];
    }
    const delta = String(reply.delta ?? "");
    this.parts.push(delta);
    return { kind: "delta", delta, restarted };
  }
}

/** The error a client reports when the answer did not arrive whole. */
export function incompleteError(id, detail) {
  return {
    type: "error",
    id,
    code: "stream_incomplete",
    message: `the answer to request ${id} did not arrive whole (${detail}); any text shown is void: send the request again`,
    retryable: true,
  };
}

/**
 * The server's reason when the stream refused a publish for being at its
 * configured limit (NATS error code 10077, "maximum messages/bytes
 * exceeded"); null for any other failure.
 */
export function fullStreamRefusal(error) {
  const api = error?.api_error;
  const description = String(api?.description ?? "");
  const full =
    api?.err_code === 10077 &&
    (description.includes("maximum messages exceeded") || description.includes("maximum bytes exceeded"));
  return full ? description : null;
}

/** The error a client reports when `llm.requests` refused the request. */
export function queueFullError(id, detail) {
  return {
    type: "error",
    id,
    code: "queue_full",
    message: `request ${id} was not accepted, the request queue is full (${detail}); retry later`,
    retryable: true,
  };
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
      const full = fullStreamRefusal(e);
      if (full !== null) {
        yield queueFullError(request.id, full);
        return;
      }
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
  let streamed = false;
  try {
    for await (const reply of submit(nc, cli.request, cli)) {
      const step = answer.push(reply);
      if (step.kind === "delta") {
        if (step.restarted) process.stdout.write(`\n[attempt ${answer.attempt}: the answer restarts]\n`);
        process.stdout.write(step.delta);
        streamed = true;
      } else if (step.kind === "completion") {
        if (step.textInCompletion) {
          if (streamed) process.stdout.write(`\n[attempt ${reply.attempt}: the answer restarts]\n`);
          process.stdout.write(reply.text);
        }
        process.stdout.write(`\n${summary(reply)}\n`);
      } else if (step.kind === "error") {
        const { code, message, retryable } = step.reply;
        process.stderr.write(`\nerror ${code}: ${message} (${retryable ? "retryable" : "not retryable"})\n`);
        break;
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

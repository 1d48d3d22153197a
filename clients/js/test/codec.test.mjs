// The JavaScript client and the Rust protocol types understand each other.
//
// Both directions go through the Rust types themselves, via the protocol
// crate's `codec` example (msgpack/json in, the Rust type's re-encoding out),
// as the Python client's tests do:
// - Rust -> JS: every committed schemas/examples/*/*.msgpack (bytes the Rust
//   types encoded) decodes here to what Rust decodes it to;
// - JS -> Rust: requests this client builds, in MessagePack and JSON, decode
//   on the Rust side to the same request; a bad field gets Rust's typed error.
//
// Run: node --test clients/js/test/ (scripts/test.sh does). Needs cargo.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as tc from "../triage_client.mjs";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const EXAMPLES = join(ROOT, "schemas", "examples");
const MESSAGES = ["request", "routed_request", "reply", "usage_event"];

let codecPath;
function codec() {
  if (!codecPath) {
    const out = execFileSync(
      "cargo",
      ["build", "-q", "-p", "triage-protocol", "--example", "codec", "--message-format=json"],
      { cwd: ROOT, encoding: "utf8", maxBuffer: 64 << 20, timeout: 600_000 },
    );
    for (const line of out.split("\n").filter(Boolean)) {
      const msg = JSON.parse(line);
      if (msg.reason === "compiler-artifact" && msg.target?.name === "codec") codecPath = msg.executable;
    }
    assert.ok(codecPath, "cargo built no codec executable");
  }
  return codecPath;
}

/** Decodes `payload` with the Rust type: [status, its JSON re-encoding or the error]. */
function rust(type, payload, from = "msgpack") {
  const done = spawnSync(codec(), [type, "--from", from, "--to", "json"], { input: payload, timeout: 30_000 });
  assert.ok(done.status === 0 || done.status === 3, `codec failed (${done.status}): ${done.stderr}`);
  return [done.status, JSON.parse(done.stdout.toString())];
}

/** Deep equality with floats compared at f32 precision (Rust writes `temperature` as f32). */
function assertEquivalent(a, b, path = "$") {
  if (typeof a === "number" && typeof b === "number") {
    assert.ok(Math.abs(a - b) <= 1e-9 + 1e-6 * Math.abs(b), `${path}: ${a} != ${b}`);
  } else if (Array.isArray(a) && Array.isArray(b)) {
    assert.equal(a.length, b.length, `${path}: lengths`);
    a.forEach((x, i) => assertEquivalent(x, b[i], `${path}[${i}]`));
  } else if (a && b && typeof a === "object" && typeof b === "object") {
    assert.deepEqual(Object.keys(a).sort(), Object.keys(b).sort(), `${path}: keys`);
    for (const k of Object.keys(a)) assertEquivalent(a[k], b[k], `${path}.${k}`);
  } else {
    assert.equal(a, b, path);
  }
}

const DEFAULTS = { version: 1, stream: true, n: 1, keep_result: false, metadata: {} };

/** `decoded` has every field of `sent`, plus only fields at their defaults. */
function assertSameModuloDefaults(sent, decoded) {
  for (const key of new Set([...Object.keys(sent), ...Object.keys(decoded)])) {
    if (key in sent && key in decoded) assertEquivalent(sent[key], decoded[key], key);
    else if (key in decoded) assert.deepEqual(decoded[key], DEFAULTS[key], `Rust added ${key}`);
    else assert.deepEqual(sent[key], DEFAULTS[key], `Rust dropped ${key}`);
  }
}

function exampleFiles(type) {
  return readdirSync(join(EXAMPLES, type))
    .filter((f) => f.endsWith(".msgpack"))
    .map((f) => join(EXAMPLES, type, f));
}

test("every Rust-encoded example decodes in JS to what Rust decodes", () => {
  let seen = 0;
  for (const type of MESSAGES) {
    const files = exampleFiles(type);
    assert.ok(files.length >= 2, `msgpack examples of ${type}`);
    for (const path of files) {
      const payload = readFileSync(path);
      const inJs = tc.decode(payload, tc.MSGPACK_MIME);
      const [status, inRust] = rust(type, payload);
      assert.equal(status, 0, JSON.stringify(inRust));
      assertEquivalent(inJs, inRust, `${type}/${path}`);
      // The JSON example says the same thing.
      const asJson = tc.decode(readFileSync(path.replace(/\.msgpack$/, ".json")), tc.JSON_MIME);
      const [, fromJson] = rust(type, tc.encode(asJson, tc.JSON_MIME), "json");
      assertEquivalent(fromJson, inRust, `${type}/${path} (json)`);
      seen += 1;
    }
  }
  assert.ok(seen >= 8, `examples seen: ${seen}`);
});

function sampleRequests() {
  return [
    tc.buildRequest({ prompt: "What is the capital of France?" }),
    tc.buildRequest({
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Prove 2+2=4. ∑ ünïcødé" },
      ],
      id: "js-req-1",
      maxTokens: 128,
      temperature: 0.7,
      tier: 2,
      tenant: "acme",
      metadata: { team: "search", priority: 3, tags: ["a", "b"], nested: { x: 1.5 } },
      deadlineMs: 1_764_082_800_000,
      replyTo: "_INBOX.js.1",
      submittedAtMs: 1_764_082_740_000,
    }),
    tc.buildRequest({ prompt: "batch me", stream: false, keepResult: true, tenant: "batch" }),
  ];
}

test("client requests decode in Rust in both encodings", () => {
  for (const request of sampleRequests()) {
    for (const [mime, from] of [
      [tc.MSGPACK_MIME, "msgpack"],
      [tc.JSON_MIME, "json"],
    ]) {
      const [status, decoded] = rust("request", tc.encode(request, mime), from);
      assert.equal(status, 0, JSON.stringify(decoded));
      assertSameModuloDefaults(request, decoded);
    }
  }
});

test("a bad field gets Rust's typed error naming it", () => {
  const bad = { ...tc.buildRequest({ prompt: "hi" }), max_tokens: "many" };
  let [status, error] = rust("request", tc.encode(bad));
  assert.equal(status, 3);
  assert.deepEqual([error.error, error.field], ["invalid_field", "max_tokens"]);
  [status, error] = rust("request", tc.encode({ ...tc.buildRequest({ prompt: "hi" }), version: 9 }, tc.JSON_MIME), "json");
  assert.deepEqual([status, error.error], [3, "unsupported_version"]);
});

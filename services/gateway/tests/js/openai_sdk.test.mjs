// The gateway through the official `openai` npm package under Node, against a
// running pipeline (router, workers, vLLM simulators). Run by
// tests/pipeline.rs, which starts all of it and passes the gateway's URL in
// TRIAGE_TEST_GATEWAY_URL (e.g. http://127.0.0.1:PORT/v1).
//
// Every call has a timeout and no retries, so a failure shows at once.

import assert from "node:assert/strict";
import { test } from "node:test";

import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.TRIAGE_TEST_GATEWAY_URL,
  apiKey: "not-checked-yet",
  maxRetries: 0,
  timeout: 60_000,
});
const hello = [{ role: "user", content: "Say hello." }];

test("models lists the three Triage models", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids.slice(0, 3), ["triage-auto", "triage-tier1", "triage-tier2"]);
});

test("a whole chat answer", async () => {
  const { data, response } = await client.chat.completions
    .create({ model: "triage-auto", messages: hello, max_tokens: 8 })
    .withResponse();
  assert.ok(["1", "2"].includes(response.headers.get("x-triage-tier")));
  assert.equal(data.object, "chat.completion");
  assert.equal(data.choices[0].message.role, "assistant");
  assert.ok(data.choices[0].message.content);
  assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);
});

test("a streamed chat answer with usage", async () => {
  const stream = await client.chat.completions.create({
    model: "triage-tier1",
    messages: hello,
    max_tokens: 8,
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  assert.equal(chunks[0].choices[0].delta.role, "assistant");
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
  assert.ok(text.length > 0);
  assert.equal(chunks.filter((c) => c.choices[0]?.finish_reason).length, 1);
  const last = chunks[chunks.length - 1];
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.completion_tokens, 8);
});

test("stop and response_format reach the model", async () => {
  const ask = async (extra) =>
    (
      await client.chat.completions.create({
        model: "triage-tier2",
        messages: hello,
        max_tokens: 12,
        temperature: 0,
        seed: 7,
        ...extra,
      })
    ).choices[0];
  const whole = (await ask({})).message.content;
  const third = " " + whole.split(/\s+/)[2];
  const cut = await ask({ stop: [third] });
  assert.equal(cut.finish_reason, "stop");
  assert.equal(cut.message.content, whole.slice(0, whole.indexOf(third)));
  const json = await ask({ response_format: { type: "json_object" } });
  assert.equal(typeof JSON.parse(json.message.content), "object");
});

test("errors arrive as the SDK's error classes", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "gpt-5", messages: hello }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === "model_not_found",
  );
  await assert.rejects(
    client.chat.completions.create({ model: "triage-auto", messages: hello, top_p: 3 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "top_p",
  );
  await assert.rejects(
    client.completions.create({ model: "triage-tier1", prompt: "  " }),
    (e) => e instanceof OpenAI.BadRequestError && e.code === "empty_prompt",
  );
});

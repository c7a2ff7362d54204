// End-to-end checks of loopgate with the official OpenAI Node SDK.
//
// Run by tests/sdk_e2e.rs against mock upstreams; one run checks one model (so one
// provider dialect). Environment as tests/sdk/test_openai_python.py:
//   LOOPGATE_BASE_URL, LOOPGATE_KEY, LG_MODEL, LG_PROVIDER?, LG_EMBED_MODEL?, LG_LISTED_MODEL?
// Exit status 0 when every check passes.

import OpenAI from "openai";

const BASE = process.env.LOOPGATE_BASE_URL;
const KEY = process.env.LOOPGATE_KEY;
const MODEL = process.env.LG_MODEL;
const PROVIDER = process.env.LG_PROVIDER;
const EMBED_MODEL = process.env.LG_EMBED_MODEL;
const LISTED = process.env.LG_LISTED_MODEL;

const client = new OpenAI({ baseURL: BASE, apiKey: KEY, maxRetries: 0, timeout: 20000 });
const MESSAGES = [{ role: "user", content: "Say hello" }];
const TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Current weather in a city",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  },
];
const TOOL_MESSAGES = [{ role: "user", content: "What is the weather in Paris?" }];

function check(cond, msg) {
  if (!cond) throw new Error(`[node ${MODEL}] ${msg}`);
}
const show = (v) => JSON.stringify(v);
const deepEqual = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function checkHeaders(response) {
  const rid = response.headers.get("loopgate-request-id");
  check(rid, "no loopgate-request-id header");
  if (PROVIDER) {
    const p = response.headers.get("loopgate-provider");
    check(p === PROVIDER, `loopgate-provider ${p} != ${PROVIDER}`);
  }
  return rid;
}

async function nonStream() {
  const { data: c, response } = await client.chat.completions.create({ model: MODEL, messages: MESSAGES }).withResponse();
  const rid = checkHeaders(response);
  check(c.id === rid, `id ${c.id} != request id ${rid}`);
  check(c.object === "chat.completion", `object ${c.object}`);
  check(Number.isInteger(c.created) && c.created > 0, "created");
  check(c.choices[0].message.content === "Hello!", `content ${show(c.choices[0].message.content)}`);
  check(c.choices[0].finish_reason === "stop", `finish_reason ${c.choices[0].finish_reason}`);
  check(c.usage && c.usage.prompt_tokens === 11 && c.usage.completion_tokens === 3 && c.usage.total_tokens === 14, `usage ${show(c.usage)}`);
}

async function stream(includeUsage) {
  const params = { model: MODEL, messages: MESSAGES, stream: true };
  if (includeUsage) params.stream_options = { include_usage: true };
  const { data: s, response } = await client.chat.completions.create(params).withResponse();
  const rid = checkHeaders(response);
  const chunks = [];
  for await (const ch of s) chunks.push(ch);
  check(chunks.length > 0, "empty stream");
  let text = "";
  let finish = null;
  for (const ch of chunks) {
    // The SDK does not check `object`; clients that switch on it break silently.
    check(ch.object === "chat.completion.chunk", `chunk object ${ch.object}`);
    check(ch.id === rid, `chunk id ${ch.id} != ${rid}`);
    for (const choice of ch.choices) {
      text += choice.delta.content ?? "";
      finish = choice.finish_reason ?? finish;
    }
  }
  check(text === "Hello!", `stream content ${show(text)}`);
  check(finish === "stop", `stream finish_reason ${finish}`);
  if (includeUsage) {
    const last = chunks[chunks.length - 1];
    check(deepEqual(last.choices, []), `last chunk has choices: ${show(last)}`);
    check(last.usage && last.usage.prompt_tokens === 11 && last.usage.completion_tokens === 3, `stream usage ${show(last.usage)}`);
    for (const ch of chunks.slice(0, -1)) check(ch.usage === null, `usage before the last chunk: ${show(ch)}`);
  } else {
    for (const ch of chunks) {
      check(ch.usage === undefined || ch.usage === null, `usage without include_usage: ${show(ch)}`);
      check(ch.choices.length > 0, "a choices-less chunk without include_usage");
    }
  }
}

async function toolsNonStream() {
  const { data: c, response } = await client.chat.completions
    .create({ model: MODEL, messages: TOOL_MESSAGES, tools: TOOLS, tool_choice: "auto" })
    .withResponse();
  checkHeaders(response);
  const choice = c.choices[0];
  check(choice.finish_reason === "tool_calls", `tool finish_reason ${choice.finish_reason}`);
  const calls = choice.message.tool_calls;
  check(calls && calls.length === 1, `tool_calls ${show(calls)}`);
  check(calls[0].id, "tool call without id");
  check(calls[0].type === "function", `tool call type ${calls[0].type}`);
  check(calls[0].function.name === "get_weather", `tool name ${calls[0].function.name}`);
  check(deepEqual(JSON.parse(calls[0].function.arguments), { city: "Paris" }), `arguments ${calls[0].function.arguments}`);
  check(c.usage.prompt_tokens === 20 && c.usage.completion_tokens === 9, `tool usage ${show(c.usage)}`);
}

async function toolsStream() {
  const s = await client.chat.completions.create({
    model: MODEL, messages: TOOL_MESSAGES, tools: TOOLS, stream: true, stream_options: { include_usage: true },
  });
  const calls = new Map();
  let finish = null;
  let usage = null;
  for await (const ch of s) {
    check(ch.object === "chat.completion.chunk", `chunk object ${ch.object}`);
    if (ch.usage) usage = ch.usage;
    for (const choice of ch.choices) {
      finish = choice.finish_reason ?? finish;
      for (const tc of choice.delta.tool_calls ?? []) {
        if (!calls.has(tc.index)) {
          // The first delta of a call carries its id and name.
          check(tc.id, `first delta of call ${tc.index} has no id`);
          check(tc.function && tc.function.name, `first delta of call ${tc.index} has no name`);
          calls.set(tc.index, { id: tc.id, name: tc.function.name, args: "" });
        } else {
          check(!tc.id || tc.id === calls.get(tc.index).id, "tool call id changed mid-stream");
        }
        if (tc.function && tc.function.arguments) calls.get(tc.index).args += tc.function.arguments;
      }
    }
  }
  check(deepEqual([...calls.keys()], [0]), `tool call indexes ${show([...calls.keys()])}`);
  const call = calls.get(0);
  check(call.name === "get_weather", `streamed tool name ${call.name}`);
  check(deepEqual(JSON.parse(call.args), { city: "Paris" }), `streamed arguments ${call.args}`);
  check(finish === "tool_calls", `streamed tool finish_reason ${finish}`);
  check(usage && usage.completion_tokens === 9, `streamed tool usage ${show(usage)}`);
}

async function errors() {
  try {
    await client.chat.completions.create({ model: "no-such-model-xyz", messages: MESSAGES });
    check(false, "unknown model did not throw");
  } catch (e) {
    check(e instanceof OpenAI.NotFoundError, `unknown model: ${e}`);
    check(e.status === 404 && e.code === "model_not_found", `status ${e.status} code ${e.code}`);
  }
  const bad = new OpenAI({ baseURL: BASE, apiKey: "lg-wrong-key", maxRetries: 0, timeout: 20000 });
  try {
    await bad.chat.completions.create({ model: MODEL, messages: MESSAGES });
    check(false, "bad key did not throw");
  } catch (e) {
    check(e instanceof OpenAI.AuthenticationError, `bad key: ${e}`);
    check(e.status === 401, `status ${e.status}`);
  }
}

async function models() {
  const ids = [];
  for await (const m of client.models.list()) {
    check(m.object === "model", `model object ${m.object}`);
    ids.push(m.id);
  }
  check(ids.length > 0, "models.list() is empty");
  if (LISTED) check(ids.includes(LISTED), `${LISTED} not in models.list()`);
}

async function embeddings() {
  if (!EMBED_MODEL) return;
  // The SDK asks for base64 by default and decodes it.
  const r = await client.embeddings.create({ model: EMBED_MODEL, input: ["first text", "second text"] });
  check(r.data.length === 2, `${r.data.length} embeddings`);
  r.data.forEach((d, i) => {
    check(d.index === i, `embedding index ${d.index}`);
    check(Array.isArray(d.embedding) && d.embedding.length > 0 && d.embedding.every((x) => typeof x === "number"),
      `embedding ${i} is not a number array: ${show(d.embedding).slice(0, 80)}`);
  });
  check(!deepEqual(r.data[0].embedding, r.data[1].embedding), "both embeddings are equal");
  check(r.usage, "embeddings without usage");
  const f = await client.embeddings.create({ model: EMBED_MODEL, input: "one text", encoding_format: "float" });
  check(f.data.length === 1 && typeof f.data[0].embedding[0] === "number", "float embeddings");
}

const steps = [
  ["non-stream", nonStream],
  ["stream+usage", () => stream(true)],
  ["stream", () => stream(false)],
  ["tools", toolsNonStream],
  ["tools-stream", toolsStream],
  ["errors", errors],
  ["models", models],
  ["embeddings", embeddings],
];
for (const [name, fn] of steps) {
  if (name === "embeddings" && !EMBED_MODEL) {
    console.log(`node ${MODEL}: embeddings not checked (no LG_EMBED_MODEL)`);
    continue;
  }
  await fn();
  console.log(`node ${MODEL}: ${name} ok`);
}

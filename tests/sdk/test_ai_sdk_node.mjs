// End-to-end checks of loopgate's /v1/responses with the Vercel AI SDK (`ai` and its default
// OpenAI provider `@ai-sdk/openai`, whose `openai(model)` calls the Responses API).
//
// Run by tests/responses_sdk.rs against mock upstreams. Environment as
// tests/sdk/test_responses_node.mjs: LOOPGATE_BASE_URL, LOOPGATE_KEY, LG_MODEL, LG_PROVIDER.
// The mocks answer "Hello!" to plain prompts and one get_weather({"city": "Paris"}) call when
// tools are offered. Exit status 0 when every check passes.

import { generateText, streamText, tool, jsonSchema, stepCountIs, APICallError } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { z } from "zod";

const MODEL = process.env.LG_MODEL;
const PROVIDER = process.env.LG_PROVIDER;
const openai = createOpenAI({
  baseURL: process.env.LOOPGATE_BASE_URL,
  apiKey: process.env.LOOPGATE_KEY,
});
const model = openai(MODEL); // the default: the Responses API

function check(cond, msg) {
  if (!cond) throw new Error(`[ai-sdk ${MODEL}] ${msg}`);
}
const show = (v) => JSON.stringify(v);
const opts = { maxRetries: 0, abortSignal: AbortSignal.timeout(20000) };

// ---- generateText (JSON)
const g = await generateText({ ...opts, model, system: "Be brief.", prompt: "Say hello" });
check(g.text === "Hello!", `text ${show(g.text)}`);
check(g.finishReason === "stop", `finishReason ${g.finishReason}`);
check(g.usage.inputTokens > 0 && g.usage.outputTokens > 0, `usage ${show(g.usage)}`);
check(g.response.headers["loopgate-provider"] === PROVIDER, `provider ${show(g.response.headers)}`);
check(g.response.id === `resp_${g.response.headers["loopgate-request-id"]}`, `id ${g.response.id}`);

// ---- a multi-turn conversation: the earlier assistant turn goes back as an item_reference
const turn2 = await generateText({
  ...opts,
  model,
  messages: [{ role: "user", content: "Say hello" }, ...g.response.messages, { role: "user", content: "And again" }],
});
check(turn2.text === "Hello!", `turn 2 ${show(turn2.text)}`);

// ---- streamText
const s = streamText({ ...opts, model, prompt: "Say hello" });
let streamed = "";
for await (const part of s.textStream) streamed += part;
check(streamed === "Hello!", `streamed ${show(streamed)}`);
check((await s.finishReason) === "stop", `stream finishReason ${await s.finishReason}`);
const su = await s.usage;
check(su.inputTokens > 0 && su.outputTokens > 0, `stream usage ${show(su)}`);

// ---- a tool call (zod schema) and a second step sending the tool result back
const seen = [];
const weatherZod = tool({
  description: "Current weather in a city",
  inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => {
    seen.push(city);
    return `Sunny, 21 C in ${city}`;
  },
});
const t = await generateText({
  ...opts,
  model,
  prompt: "What is the weather in Paris?",
  tools: { get_weather: weatherZod },
  stopWhen: stepCountIs(2),
});
check(t.steps.length === 2, `steps ${t.steps.length}: ${show(t.steps.map((x) => x.finishReason))}`);
const call = t.steps[0].toolCalls[0];
check(call && call.toolName === "get_weather" && call.input.city === "Paris", `call ${show(t.steps[0].toolCalls)}`);
check(t.steps[0].finishReason === "tool-calls", `step 0 ${t.steps[0].finishReason}`);
check(t.steps[0].toolResults[0].output === "Sunny, 21 C in Paris", show(t.steps[0].toolResults));
check(seen.length >= 1 && seen[0] === "Paris", `executed ${show(seen)}`);

// ---- the same, streamed, with a JSON-schema tool
const weatherJson = tool({
  description: "Current weather in a city",
  inputSchema: jsonSchema({
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
    additionalProperties: false,
  }),
  execute: async ({ city }) => `Sunny, 21 C in ${city}`,
});
const ts = streamText({
  ...opts,
  model,
  prompt: "What is the weather in Paris?",
  tools: { get_weather: weatherJson },
  stopWhen: stepCountIs(2),
});
const kinds = new Set();
for await (const part of ts.fullStream) {
  if (part.type === "error") throw new Error(`[ai-sdk ${MODEL}] stream error ${part.error}`);
  kinds.add(part.type);
}
const steps = await ts.steps;
check(steps.length === 2, `streamed steps ${steps.length}`);
check(steps[0].toolCalls[0]?.input?.city === "Paris", `streamed call ${show(steps[0].toolCalls)}`);
check(steps[0].toolResults[0]?.output === "Sunny, 21 C in Paris", show(steps[0].toolResults));
for (const k of ["tool-input-start", "tool-call", "tool-result", "finish-step", "finish"]) {
  check(kinds.has(k), `stream part ${k} missing: ${show([...kinds])}`);
}

// ---- an unsupported provider-executed tool: a 400 naming it
try {
  await generateText({ ...opts, model, prompt: "x", tools: { web_search: openai.tools.webSearch({}) } });
  check(false, "web_search accepted");
} catch (e) {
  check(APICallError.isInstance(e) && e.statusCode === 400, `${e}`);
  check(e.responseBody.includes("tools[0].type") && e.message.includes("web_search"), `${e.message} ${e.responseBody}`);
}
console.log(`ai-sdk ok against ${MODEL} (${PROVIDER})`);

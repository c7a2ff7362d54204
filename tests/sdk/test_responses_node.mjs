// End-to-end checks of loopgate's /v1/responses with the official OpenAI Node SDK.
//
// Run by tests/responses_sdk.rs against mock upstreams. Environment as
// tests/sdk/test_responses_python.py: LOOPGATE_BASE_URL, LOOPGATE_KEY, LG_MODEL, LG_PROVIDER.
// Exit status 0 when every check passes.

import OpenAI from "openai";

const MODEL = process.env.LG_MODEL;
const PROVIDER = process.env.LG_PROVIDER;
const client = new OpenAI({
  baseURL: process.env.LOOPGATE_BASE_URL,
  apiKey: process.env.LOOPGATE_KEY,
  maxRetries: 0,
  timeout: 20000,
});
const TOOLS = [
  {
    type: "function",
    name: "get_weather",
    description: "Current weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    strict: false,
  },
];

function check(cond, msg) {
  if (!cond) throw new Error(`[node responses ${MODEL}] ${msg}`);
}
const show = (v) => JSON.stringify(v);

// ---- JSON
const { data: r, response } = await client.responses
  .create({ model: MODEL, instructions: "Be brief.", input: "Say hello" })
  .withResponse();
check(response.headers.get("loopgate-provider") === PROVIDER, `provider ${response.headers.get("loopgate-provider")}`);
check(r.id === `resp_${response.headers.get("loopgate-request-id")}`, `id ${r.id}`);
check(r.object === "response" && r.status === "completed", show(r));
check(r.output_text === "Hello!", `output_text ${show(r.output_text)}`);
check(r.usage.total_tokens === r.usage.input_tokens + r.usage.output_tokens, show(r.usage));

// ---- stream (raw events) and the stream helper
const stream = await client.responses.create({ model: MODEL, input: "Say hello", stream: true });
const events = [];
for await (const ev of stream) events.push(ev);
check(events[0].type === "response.created", show(events[0]));
check(events.at(-1).type === "response.completed", show(events.at(-1)));
check(events.every((e, i) => e.sequence_number === i), "sequence numbers");
const text = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
check(text === "Hello!", `streamed ${show(text)}`);
const helper = client.responses.stream({ model: MODEL, input: "Say hello" });
const final = await helper.finalResponse();
check(final.output_text === "Hello!", `helper ${show(final.output_text)}`);

// ---- function tool round trip (streamed call, JSON follow-up)
const toolStream = client.responses.stream({ model: MODEL, input: "What is the weather in Paris?", tools: TOOLS });
const withCall = await toolStream.finalResponse();
const call = withCall.output.find((o) => o.type === "function_call");
check(call && call.name === "get_weather", show(withCall.output));
check(JSON.parse(call.arguments).city === "Paris", `arguments ${call.arguments}`);
const follow = await client.responses.create({
  model: MODEL,
  tools: TOOLS,
  input: [
    { role: "user", content: "What is the weather in Paris?" },
    { type: "function_call", call_id: call.call_id, name: call.name, arguments: call.arguments },
    { type: "function_call_output", call_id: call.call_id, output: "Sunny, 21 C" },
  ],
});
check(follow.status === "completed", show(follow));

// ---- an unsupported built-in tool: 400 naming it
try {
  await client.responses.create({ model: MODEL, input: "x", tools: [{ type: "file_search", vector_store_ids: ["vs"] }] });
  check(false, "file_search accepted");
} catch (e) {
  check(e instanceof OpenAI.BadRequestError, `${e}`);
  check(e.param === "tools[0].type" && e.message.includes("file_search"), `${e.message} ${e.param}`);
}
console.log(`responses node SDK ok against ${MODEL} (${PROVIDER})`);

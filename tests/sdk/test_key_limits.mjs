// Virtual keys' rate limits and budgets as the official OpenAI Node SDK sees them.
// Run by tests/sdk_e2e.rs; the environment is described in test_key_limits.py.
import OpenAI from "openai";

const BASE = process.env.LOOPGATE_BASE_URL;
const MESSAGES = [{ role: "user", content: "Say hello" }];

function check(cond, msg) {
  if (!cond) throw new Error(`[node key limits] ${typeof msg === "string" ? msg : JSON.stringify(msg)}`);
}

// The error's headers are a plain object in SDK v4 and a fetch Headers in v5.
const hget = (h, k) => (typeof h?.get === "function" ? h.get(k) : h?.[k]);

const rpm = new OpenAI({ baseURL: BASE, apiKey: process.env.LG_RPM_KEY, maxRetries: 0, timeout: 20000 });
const { data, response } = await rpm.chat.completions
  .create({ model: "gpt-4o-mini", messages: MESSAGES })
  .withResponse();
check(response.headers.get("x-ratelimit-limit-requests") === "1", "limit-requests header");
check(response.headers.get("x-ratelimit-remaining-requests") === "0", "remaining-requests header");
check(data.choices[0].message.content, "no answer");

let refused = false;
try {
  await rpm.chat.completions.create({ model: "gpt-4o-mini", messages: MESSAGES });
} catch (e) {
  check(e instanceof OpenAI.RateLimitError, `not a RateLimitError: ${e}`);
  check(e.status === 429, e.status);
  check(e.code === "rate_limit_exceeded", e.error);
  check(Number(hget(e.headers, "retry-after")) >= 1, "retry-after");
  check(hget(e.headers, "x-ratelimit-remaining-requests") === "0", "remaining on 429");
  refused = true;
}
check(refused, "the second request within the minute was not refused");

const budget = new OpenAI({ baseURL: BASE, apiKey: process.env.LG_BUDGET_KEY, maxRetries: 0, timeout: 20000 });
refused = false;
try {
  await budget.chat.completions.create({ model: "gpt-4o-mini", messages: MESSAGES });
} catch (e) {
  check(e instanceof OpenAI.RateLimitError, `not a RateLimitError: ${e}`);
  check(e.code === "insufficient_quota", e.error);
  check(e.message.includes("total budget"), e.message);
  refused = true;
}
check(refused, "a key with a spent budget was served");
console.log("node key limits: ok");

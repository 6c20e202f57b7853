// N held calls through openai-node at its defaults (2 retries) with a 5 s timeout, each caller retrying on its
// own until it has an answer, as an application would; prints what every caller got as JSON.
//
// Usage: node billed_once.mjs BASE_URL N [PATIENCE_S] < prompts.json
//   prompts.json: a JSON array of N `messages` arrays.
// Output: {"sdk", "answers": {i: content}, "failures": {i: error}, "attempts": [...], "errors": {i: [error, ...]}}

import OpenAI from 'openai';
import { VERSION } from 'openai/version';

const MODEL = 'gpt-4o-mini';
const TIMEOUT_MS = 5000;

const [base, count, patience = '120'] = process.argv.slice(2);
const n = Number(count);
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const prompts = JSON.parse(Buffer.concat(chunks).toString('utf8'));
if (!base || !Number.isInteger(n) || prompts.length !== n) {
  console.error('usage: node billed_once.mjs BASE_URL N [PATIENCE_S] < prompts.json (a JSON array of N messages arrays)');
  process.exit(2);
}
const until = Date.now() + Number(patience) * 1000;

/** What an application retries: a lost or timed-out connection, 429 and 5xx (after the SDK's own retries). */
function retried(err) {
  if (err instanceof OpenAI.APIConnectionError) return true; // APIConnectionTimeoutError is one too
  if (err instanceof OpenAI.RateLimitError || err instanceof OpenAI.InternalServerError) return true;
  // A body cut after the headers: fetch rejects the body read with TypeError('terminated'), which openai-node
  // passes on unwrapped and does not retry itself.
  return err instanceof TypeError && err.message === 'terminated';
}

function describe(err) {
  const cause = err?.cause ? ` (cause: ${err.cause.code ?? err.cause.message ?? err.cause})` : '';
  return `${err?.constructor?.name ?? 'Error'}: ${err?.message ?? err}${cause}`;
}

const answers = {};
const failures = {};
const errors = {};
const attempts = new Array(n).fill(0);

async function caller(i) {
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'dev', timeout: TIMEOUT_MS });
  for (;;) {
    attempts[i] += 1;
    try {
      const completion = await client.chat.completions.create(
        { model: MODEL, messages: prompts[i] },
        { headers: { 'X-Deadline': '2h' } },
      );
      answers[i] = completion.choices[0].message.content ?? '';
      return;
    } catch (err) {
      (errors[i] ??= []).push(describe(err));
      if (!retried(err) || Date.now() > until) {
        failures[i] = describe(err);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}

await Promise.all(prompts.map((_, i) => caller(i)));
process.stdout.write(JSON.stringify({ sdk: VERSION, answers, failures, attempts, errors }) + '\n');

// Background responses through openai-node: create one with an X-Deadline (the router defers it), poll it with
// retrieve until it ends, create another and cancel it; prints what the SDK returned as JSON.
//
// Usage: node background.mjs BASE_URL

import OpenAI from 'openai';

const [base] = process.argv.slice(2);
if (!base) {
  console.error('usage: node background.mjs BASE_URL');
  process.exit(2);
}
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'dev', maxRetries: 0 });
const later = { headers: { 'X-Deadline': '2h' } };

const created = await client.responses.create({ model: 'gpt-4o-mini', input: 'Name a river.', background: true }, later);
let done = created;
const until = Date.now() + 30000;
while (['queued', 'in_progress'].includes(done.status) && Date.now() < until) {
  await new Promise((resolve) => setTimeout(resolve, 200));
  done = await client.responses.retrieve(created.id);
}
const other = await client.responses.create({ model: 'gpt-4o-mini', input: 'Cancel me.', background: true }, later);
const cancelled = await client.responses.cancel(other.id);
const again = await client.responses.cancel(other.id);
console.log(JSON.stringify({
  created: { id: created.id, status: created.status, background: created.background },
  done: { id: done.id, status: done.status, text: done.output_text },
  cancelled: [cancelled.status, again.status],
}));

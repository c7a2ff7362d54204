// Token calibration helper (not used by derive_replay.py or CI).
// Counts every text of a --dump-texts file with the real tokenizers:
// cl100k_base (GPT-4-1106) and Mistral/Mixtral's 32k SentencePiece vocabulary.
// Run from a directory where `npm install gpt-tokenizer@4.0.0 mistral-tokenizer-js@1.0.0`
// was done:  node <repo>/benches/data/calibrate/count_tokens.mjs texts.jsonl counts.jsonl
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';

const mod = (p) => import(pathToFileURL(path.join(process.cwd(), 'node_modules', p)).href);
const { encode: gptEncode } = await mod('gpt-tokenizer/esm/encoding/cl100k_base.js');
const mistral = (await mod('mistral-tokenizer-js/mistral-tokenizer.js')).default;

const [, , inPath, outPath] = process.argv;
const out = fs.createWriteStream(outPath);
const rl = readline.createInterface({ input: fs.createReadStream(inPath) });
for await (const line of rl) {
  if (!line.trim()) continue;
  const { kind, text } = JSON.parse(line);
  // No BOS, leading space as inside a chat template.
  const rec = { kind, gpt: gptEncode(text).length, mistral: mistral.encode(text, false, true).length };
  out.write(JSON.stringify(rec) + '\n');
}
out.end();

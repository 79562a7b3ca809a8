// llama.cpp's own view of a GGUF file, through node-llama-cpp's prebuilt CPU libraries (pinned in
// tools/llamacpp/package.json). Used by tests and benchmarks to check flexquant's exports in the runtime users run.
//
//   node tools/llamacpp/eval.mjs MODEL.gguf REQUEST.json > RESULT.json
// REQUEST: {"windows": [{"ids": [...], "first": k}, ...], "greedy_steps": N, "threads": T, "texts": [...]}
// RESULT:  {"nll_sum", "scored", "greedy": [ids from BOS], "tokens": [ids of each text, no BOS]}
// Each window is evaluated in a fresh sequence (F32 KV cache, flash attention off) and scores the next-token
// probability of positions first..len-2 (the windows and `first` come from flexquant's ppl_windows).
import fs from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const [modelPath, requestPath] = process.argv.slice(2);
if (!modelPath || !requestPath) {
  console.error("usage: node eval.mjs MODEL.gguf REQUEST.json");
  process.exit(2);
}
const req = JSON.parse(fs.readFileSync(requestPath, "utf8"));
const windows = req.windows ?? [];
const longest = Math.max(2, req.greedy_steps ? req.greedy_steps + 1 : 2, ...windows.map((w) => w.ids.length));

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({
  contextSize: longest, batchSize: longest, sequences: 1, flashAttention: false,
  experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32", threads: req.threads ?? 1,
});
const sequence = context.getSequence();

let nllSum = 0;
let scored = 0;
for (const {ids: w, first} of windows) {
  await sequence.clearHistory();
  const items = w.map((t, i) => (i + 1 < w.length && i >= first ? [t, {generateNext: {probabilities: true}}] : t));
  const out = await sequence.controlledEvaluate(items);
  for (let i = first; i + 1 < w.length; ++i) {
    const p = out[i]?.next?.probabilities?.get(w[i + 1]);
    if (p === undefined || !(p > 0)) throw new Error(`no probability for token ${w[i + 1]} at position ${i}`);
    nllSum += -Math.log(p);
    scored += 1;
  }
}

// Greedy decoding from BOS, stopping at BOS as llama2.c (and flexquant's generate_greedy) do.
const greedy = [];
if (req.greedy_steps) {
  await sequence.clearHistory();
  const bos = model.tokens.bos ?? 1;
  greedy.push(bos);
  let last = bos;
  for (let s = 0; s < req.greedy_steps && greedy.length < longest; ++s) {
    const [out] = await sequence.controlledEvaluate([[last, {generateNext: {probabilities: true}}]]);
    const [best] = out.next.probabilities.entries().next().value;
    if (best === bos) break;
    greedy.push(best);
    last = best;
  }
}
// The file's own tokenizer on each text (special-token text stays text).
const tokens = (req.texts ?? []).map((t) => Array.from(model.tokenize(t, false)));
console.log(JSON.stringify({nll_sum: nllSum, scored, greedy, tokens}));
await context.dispose();
await model.dispose();
await llama.dispose();

// ONNX Runtime's own outputs for a model, through onnxruntime-node's CPU library (pinned in
// tools/onnxruntime/package.json). Used by tests and benchmarks to check flexquant's ONNX import and exports.
//
//   node tools/onnxruntime/run.mjs MODEL.onnx INPUT.f32 d0,d1,... OUTPUT.f32
// INPUT: raw little-endian float32 of the given shape, fed to the model's first input; OUTPUT: the first output,
// raw float32 (its shape is printed as JSON on stdout).
import fs from "node:fs";
import ort from "onnxruntime-node";

const [modelPath, inputPath, dims, outputPath] = process.argv.slice(2);
if (!outputPath) {
  console.error("usage: node run.mjs MODEL.onnx INPUT.f32 d0,d1,... OUTPUT.f32");
  process.exit(2);
}
const shape = dims.split(",").map(Number);
const buf = fs.readFileSync(inputPath);
const data = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
const session = await ort.InferenceSession.create(modelPath, {executionProviders: ["cpu"], intraOpNumThreads: 1,
                                                              graphOptimizationLevel: "disabled"});
const feeds = {[session.inputNames[0]]: new ort.Tensor("float32", data, shape)};
const out = (await session.run(feeds))[session.outputNames[0]];
fs.writeFileSync(outputPath, Buffer.from(out.data.buffer, out.data.byteOffset, out.data.byteLength));
console.log(JSON.stringify({dims: out.dims, type: out.type}));

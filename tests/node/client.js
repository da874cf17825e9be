#!/usr/bin/env node
// A Node.js aeguard client built from proto/aeguard/v1/aeguard.proto ALONE (no generated code,
// nothing from the Python package): it proves the wire API is usable from another language.
//
// Usage:
//   node client.js score  HOST:PORT [--proto PATH] < spec.json
//   node client.js stream HOST:PORT [--proto PATH] < spec.json
//   node client.js info   HOST:PORT [--proto PATH] [--model NAME]
// Security options (any command): --tls-ca PEM (TLS, the server checked against this CA),
//   --tls-cert PEM --tls-key PEM (a client certificate, for mutual TLS), --token-file PATH (sends
//   "authorization: Bearer <token>", the file's first line, on every call).
//
// `score` spec (JSON on stdin):
//   {"model": "", "rows": [[1.0, 2.0, ...], ...], "encoding": "values" | "raw" | "named",
//    "top_k": 2, "feature_errors": false, "request_id": "r1", "columnar": false}
//   "values" sends Matrix.values, "raw" sends Matrix.raw (little-endian float32 bytes), "named"
//   asks GetModelInfo for the feature names and sends NamedSample maps. "columnar" asks for
//   ScoreResponse.columns; the client decodes its little-endian byte columns into plain arrays
//   (see decodeColumns) and prints them in place of the bytes.
//   Windowed models: "series": "h1" (on a stream, continues that series' windows from the previous
//   request naming it) and "timestamps": [seconds, ...] (one per row: gaps and order checks).
//   Rows without a full window come back with SampleResult.warm_up = true, or columns.warm_up
//   decoded to booleans (their scores are NaN, printed as null).
// `stream` spec: {"requests": [<score spec>, ...]}: one ScoreStream call, every request written
//   in order, the half-close, then every response read.
//
// Output: one JSON document on stdout.
//   success: {"ok": true, "response": {...}} (score, info) or {"ok": true, "responses": [...]}
//   gRPC error: {"ok": false, "error": {"code": 3, "code_name": "INVALID_ARGUMENT", "details": "..."},
//                "responses": [...received before the error, stream only]}
// Exit status: 0 success, 1 gRPC error, 2 usage error.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const DEFAULT_PROTO = path.resolve(__dirname, "..", "..", "proto", "aeguard", "v1", "aeguard.proto");
const DEADLINE_MS = 30000;
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

function usage(message) {
  process.stderr.write(`client.js: ${message}\n`);
  process.stderr.write(
    "usage: node client.js score|stream|info HOST:PORT [--proto PATH] [--model NAME] " +
      "[--tls-ca PEM [--tls-cert PEM --tls-key PEM]] [--token-file PATH]\n",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const [command, target, ...rest] = argv;
  if (!["score", "stream", "info"].includes(command)) usage(`unknown command ${JSON.stringify(command)}`);
  if (!target || !/^[^:]+:\d+$/.test(target)) usage(`HOST:PORT expected, got ${JSON.stringify(target)}`);
  const options = { command, target, proto: DEFAULT_PROTO, model: "", tlsCa: "", tlsCert: "", tlsKey: "", tokenFile: "" };
  for (let i = 0; i < rest.length; i += 2) {
    const value = rest[i + 1];
    if (value === undefined) usage(`${rest[i]} needs a value`);
    if (rest[i] === "--proto") options.proto = path.resolve(value);
    else if (rest[i] === "--model") options.model = value;
    else if (rest[i] === "--tls-ca") options.tlsCa = value;
    else if (rest[i] === "--tls-cert") options.tlsCert = value;
    else if (rest[i] === "--tls-key") options.tlsKey = value;
    else if (rest[i] === "--token-file") options.tokenFile = value;
    else usage(`unknown option ${rest[i]}`);
  }
  if (Boolean(options.tlsCert) !== Boolean(options.tlsKey)) usage("--tls-cert and --tls-key go together");
  if (options.tlsCert && !options.tlsCa) usage("--tls-cert needs --tls-ca");
  return options;
}

function loadService(protoPath) {
  // keepCase: field names exactly as in the .proto; defaults: every field present in responses.
  const definition = protoLoader.loadSync(protoPath, {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).aeguard.v1.AnomalyDetector;
}

function readStdinJson() {
  const text = fs.readFileSync(0, "utf8");
  try {
    return JSON.parse(text);
  } catch (err) {
    usage(`stdin is not JSON: ${err.message}`);
  }
}

function float32LittleEndian(values) {
  const buffer = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => buffer.writeFloatLE(v, 4 * i));
  return buffer;
}

// Build an aeguard.v1.ScoreRequest object from a spec; featureNames is needed for "named" only.
function buildRequest(spec, featureNames) {
  const rows = spec.rows || [];
  const cols = rows.length ? rows[0].length : 0;
  const request = {
    model: spec.model || "",
    top_k: spec.top_k || 0,
    feature_errors: Boolean(spec.feature_errors),
    request_id: spec.request_id || "",
    columnar: Boolean(spec.columnar),
    series: spec.series || "",
    timestamps: spec.timestamps || [],
  };
  const encoding = spec.encoding || "values";
  if (encoding === "named") {
    request.named = rows.map((row) => ({
      features: Object.fromEntries(row.map((v, j) => [featureNames[j], v])),
    }));
  } else if (encoding === "values") {
    request.samples = { rows: rows.length, cols, values: rows.flat() };
  } else if (encoding === "raw") {
    request.samples = { rows: rows.length, cols, raw: float32LittleEndian(rows.flat()) };
  } else {
    usage(`unknown encoding ${JSON.stringify(encoding)}`);
  }
  return request;
}

// One little-endian column of a ColumnarResults as a plain array; `width` bytes per number.
function readColumn(buffer, width, read, expectedCount, name) {
  if (buffer.length !== width * expectedCount) {
    throw new Error(`columns.${name}: ${buffer.length} bytes, expected ${width * expectedCount}`);
  }
  const values = new Array(expectedCount);
  for (let i = 0; i < expectedCount; i++) values[i] = read.call(buffer, width * i);
  return values;
}

// Split a row-major list into `rows` rows of `width`.
function rowsOf(flat, rows, width) {
  return Array.from({ length: rows }, (_, i) => flat.slice(i * width, (i + 1) * width));
}

// ScoreResponse.columns with every byte column decoded, as the .proto documents the layout:
// float32 and uint32 little-endian, is_anomaly one byte per sample, matrices row-major.
function decodeColumns(columns) {
  const n = columns.rows;
  const k = columns.top_k;
  const f32 = Buffer.prototype.readFloatLE;
  const u32 = Buffer.prototype.readUInt32LE;
  const decoded = {
    rows: n,
    scores: readColumn(columns.scores, 4, f32, n, "scores"),
    normalized_scores: readColumn(columns.normalized_scores, 4, f32, n, "normalized_scores"),
    is_anomaly: readColumn(columns.is_anomaly, 1, Buffer.prototype.readUInt8, n, "is_anomaly").map((b) => b === 1),
    severity: readColumn(columns.severity, 4, u32, n, "severity"),
    severity_names: columns.severity_names,
    top_k: k,
    top_feature_indices: rowsOf(readColumn(columns.top_feature_indices, 4, u32, n * k, "top_feature_indices"), n, k),
    top_feature_errors: rowsOf(readColumn(columns.top_feature_errors, 4, f32, n * k, "top_feature_errors"), n, k),
    top_feature_shares: rowsOf(readColumn(columns.top_feature_shares, 4, f32, n * k, "top_feature_shares"), n, k),
    feature_errors: null,
  };
  // Windowed models only: one byte per sample, 1 = warm-up (no score); empty for a row-wise model.
  decoded.warm_up = columns.warm_up.length
    ? readColumn(columns.warm_up, 1, Buffer.prototype.readUInt8, n, "warm_up").map((b) => b === 1)
    : new Array(n).fill(false);
  const fe = columns.feature_errors;
  if (fe) {
    const flat = readColumn(fe.raw, 4, f32, fe.rows * fe.cols, "feature_errors.raw");
    decoded.feature_errors = rowsOf(flat, fe.rows, fe.cols);
  }
  return decoded;
}

// A response as printed: columns decoded when present.
function decodeResponse(response) {
  if (response.columns) response.columns = decodeColumns(response.columns);
  return response;
}

// Channel credentials (plaintext, or TLS with an optional client certificate) and the metadata
// every call carries (the bearer token, if any).
function channelCredentials(options) {
  if (!options.tlsCa) return grpc.credentials.createInsecure();
  const read = (file) => (file ? fs.readFileSync(file) : null);
  return grpc.credentials.createSsl(read(options.tlsCa), read(options.tlsKey), read(options.tlsCert));
}

function callMetadata(options) {
  const metadata = new grpc.Metadata();
  if (options.tokenFile) {
    const token = fs.readFileSync(options.tokenFile, "utf8").split("\n")[0].trim();
    metadata.add("authorization", `Bearer ${token}`);
  }
  return metadata;
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: deadline() }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

function stream(client, requests, metadata) {
  return new Promise((resolve, reject) => {
    const responses = [];
    const call = client.ScoreStream(metadata, { deadline: deadline() });
    call.on("data", (response) => responses.push(response));
    call.on("error", (err) => {
      err.responses = responses;
      reject(err);
    });
    call.on("end", () => resolve(responses));
    for (const request of requests) call.write(request);
    call.end();
  });
}

function printError(err) {
  const result = {
    ok: false,
    error: { code: err.code, code_name: CODE_NAMES[err.code] || "UNKNOWN", details: err.details || err.message },
  };
  if (err.responses) result.responses = err.responses;
  process.stdout.write(JSON.stringify(result) + "\n");
}

// Bytes fields come back as Buffers; print them as base64 so the output stays JSON.
function replacer(key, value) {
  if (value && value.type === "Buffer" && Array.isArray(value.data)) return Buffer.from(value.data).toString("base64");
  return value;
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const AnomalyDetector = loadService(options.proto);
  const client = new AnomalyDetector(options.target, channelCredentials(options));
  const metadata = callMetadata(options);
  try {
    let result;
    if (options.command === "info") {
      result = { ok: true, response: await unary(client, "GetModelInfo", { model: options.model }, metadata) };
    } else {
      const spec = readStdinJson();
      const specs = options.command === "stream" ? spec.requests || [] : [spec];
      let featureNames = null;
      if (specs.some((s) => s.encoding === "named")) {
        const model = specs.find((s) => s.encoding === "named").model || "";
        featureNames = (await unary(client, "GetModelInfo", { model }, metadata)).feature_names;
      }
      const requests = specs.map((s) => buildRequest(s, featureNames));
      result =
        options.command === "score"
          ? { ok: true, response: decodeResponse(await unary(client, "Score", requests[0], metadata)) }
          : { ok: true, responses: (await stream(client, requests, metadata)).map(decodeResponse) };
    }
    process.stdout.write(JSON.stringify(result, replacer) + "\n");
    process.exitCode = 0;
  } catch (err) {
    if (err.code === undefined) throw err;
    printError(err);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

main();

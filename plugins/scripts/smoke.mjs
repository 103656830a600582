// End-to-end smoke test of the built plugins with a minimal host written from docs/PLUGINS.md
// (Node's WebAssembly): instantiate, check the ABI version, init with a configuration, write
// input batches at the address quiver_buffer returns, and decode verdicts / transform output.
//
//   cargo build --release --target wasm32-unknown-unknown --manifest-path plugins/Cargo.toml
//   node plugins/scripts/smoke.mjs
import fs from "node:fs";
import path from "node:path";
import assert from "node:assert/strict";

const dir = path.join(path.dirname(new URL(import.meta.url).pathname), "..", "target",
  "wasm32-unknown-unknown", "release");
const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

async function load(name) {
  let memory;
  const logs = [];
  const imports = {
    quiver: {
      log(level, addr, len) {
        logs.push([level, dec.decode(new Uint8Array(memory.buffer, addr, len))]);
      },
    },
  };
  const { instance } = await WebAssembly.instantiate(
    fs.readFileSync(path.join(dir, name + ".wasm")), imports);
  memory = instance.exports.memory;
  assert.equal(instance.exports.quiver_abi_version(), 1);
  return { ex: instance.exports, mem: () => memory.buffer, logs };
}

function str16(out, bytes) {
  out.push(bytes.length & 0xff, bytes.length >> 8, ...bytes);
}

function section(pairs) {
  const out = [];
  for (const [k, v] of pairs) {
    str16(out, enc.encode(k));
    str16(out, enc.encode(v));
  }
  return new Uint8Array(out);
}

function write(p, bytes) {
  const addr = p.ex.quiver_buffer(bytes.length);
  assert.notEqual(addr, 0);
  new Uint8Array(p.mem(), addr, bytes.length).set(bytes);
  return addr;
}

function init(p, pairs) {
  const config = section(pairs);
  write(p, config);
  return p.ex.quiver_init(config.length);
}

// Messages: {id, tag, keys: [..], props: [[n, v]..], body: string}
// Returns the batch length and, per message, the absolute address of each field.
function writeBatch(p, msgs, { ingress = true, topic = "orders" } = {}) {
  const blobs = [];
  const fields = msgs.map((m) => {
    const keys = [];
    for (const k of m.keys ?? []) str16(keys, enc.encode(k));
    return [enc.encode(m.tag ?? ""), new Uint8Array(keys), section(m.props ?? []),
      enc.encode(m.body ?? "")];
  });
  let len = 32 + 80 * msgs.length;
  const place = (bytes) => { const at = len; blobs.push([at, bytes]); len += bytes.length; return at; };
  const topicAt = place(enc.encode(topic));
  const offsets = fields.map((fs) => fs.map((f) => place(f)));
  const base = p.ex.quiver_buffer(len);
  assert.notEqual(base, 0);
  const buf = new Uint8Array(p.mem(), base, len);
  buf.fill(0);
  const dv = new DataView(p.mem(), base, len);
  [msgs.length, len, ingress ? 1 : 0, 2, base + topicAt, enc.encode(topic).length, 80, 0]
    .forEach((v, i) => dv.setUint32(i * 4, v, true));
  msgs.forEach((m, i) => {
    const d = 32 + i * 80;
    dv.setBigUint64(d, BigInt(m.id ?? i + 1), true);
    dv.setBigUint64(d + 16, ingress ? 0xffffffffffffffffn : BigInt(i), true);
    dv.setBigInt64(d + 24, 1700000000000n, true);
    fields[i].forEach((f, j) => {
      dv.setUint32(d + 48 + j * 8, base + offsets[i][j], true);
      dv.setUint32(d + 52 + j * 8, f.length, true);
    });
  });
  for (const [at, bytes] of blobs) buf.set(bytes, at);
  return { len, base, addrs: offsets.map((o) => o.map((x) => base + x)) };
}

function filter(p, msgs, opts) {
  const { len } = writeBatch(p, msgs, opts);
  const v = p.ex.quiver_filter(len);
  assert.notEqual(v, 0);
  return [...new Uint8Array(p.mem(), v, msgs.length)];
}

function readSection(mem, addr, len, pairs) {
  const b = new Uint8Array(mem, addr, len);
  const out = [];
  let i = 0;
  while (i < b.length) {
    const n = b[i] | (b[i + 1] << 8);
    out.push(dec.decode(b.subarray(i + 2, i + 2 + n)));
    i += 2 + n;
  }
  if (!pairs) return out;
  const res = [];
  for (let j = 0; j < out.length; j += 2) res.push([out[j], out[j + 1]]);
  return res;
}

function transform(p, msgs, opts) {
  const batch = writeBatch(p, msgs, opts);
  const o = p.ex.quiver_transform(batch.len);
  assert.notEqual(o, 0);
  const dv = new DataView(p.mem());
  const count = dv.getUint32(o, true);
  assert.equal(dv.getUint32(o + 4, true), 40);
  const entries = [];
  for (let i = 0; i < count; i++) {
    const e = o + 8 + i * 40;
    const f = (j) => [dv.getUint32(e + 8 + j * 8, true), dv.getUint32(e + 12 + j * 8, true)];
    const [tag, keys, props, body] = [f(0), f(1), f(2), f(3)];
    entries.push({
      index: dv.getUint32(e, true),
      action: dv.getUint32(e + 4, true),
      tag: dec.decode(new Uint8Array(p.mem(), ...tag)),
      keys: readSection(p.mem(), ...keys, false),
      props: readSection(p.mem(), ...props, true),
      body: dec.decode(new Uint8Array(p.mem(), ...body)),
      addrs: [tag, keys, props, body].map(([a, l]) => (l ? a : null)),
    });
  }
  return { entries, batch };
}

// json_filter
{
  const p = await load("json_filter");
  assert.equal(init(p, [["field", "order.amount"], ["op", "gt"], ["value", "100"]]), 1);
  const v = filter(p, [
    { body: '{"order":{"amount":150}}' },
    { body: '{"order":{"amount":50}}' },
    { body: "not json" },
    { body: '{"order":{}}' },
    { body: '{"order":{"amount":100.5}}', tag: "x", props: [["a", "b"]] },
  ]);
  assert.deepEqual(v, [1, 0, 0, 0, 1]);
  // A second, smaller batch reuses the buffer.
  const a1 = p.ex.quiver_buffer(10), a2 = p.ex.quiver_buffer(5);
  assert.equal(a1, a2);
  assert.deepEqual(filter(p, []), []);
  const q = await load("json_filter");
  assert.equal(init(q, [["field", "x"], ["op", "like"], ["value", "1"]]), 0);
  assert.ok(q.logs.some(([l, t]) => l === 1 && t.includes('unknown op "like"')), q.logs);
  // A malformed batch: 0 and a logged reason.
  write(p, new Uint8Array(40));
  assert.equal(p.ex.quiver_filter(40), 0);
  assert.ok(p.logs.some(([l, t]) => l === 1 && t.includes("bad input batch")), p.logs);
  console.log("json_filter ok", p.logs.map((l) => l[1]));
}

// redact
{
  const p = await load("redact");
  assert.equal(init(p, [["properties", "note"]]), 1);
  const { entries, batch } = transform(p, [
    { body: "card 4111 1111 1111 1111, mail john.doe@example.com", tag: "t", keys: ["k"] },
    { body: "nothing here", props: [["note", "x"]] },
    { body: "ok", props: [["note", "jane@example.org"], ["other", "a@b.io"]] },
  ]);
  assert.equal(entries.length, 3);
  assert.equal(entries[0].body, "card **** **** **** 1111, mail j***@example.com");
  assert.deepEqual(entries[0].props, [["redacted", "true"]]);
  assert.equal(entries[0].addrs[0], batch.addrs[0][0], "tag pointed at in place");
  assert.equal(entries[0].addrs[1], batch.addrs[0][1], "keys pointed at in place");
  assert.deepEqual(entries[0].keys, ["k"]);
  assert.equal(entries[1].body, "nothing here");
  assert.deepEqual(entries[1].addrs, [null, null, batch.addrs[1][2], batch.addrs[1][3]],
    "an unchanged message is not copied");
  assert.equal(entries[2].addrs[3], batch.addrs[2][3]);
  assert.deepEqual(entries[2].props,
    [["note", "j***@example.org"], ["other", "a@b.io"], ["redacted", "true"]]);
  console.log("redact ok", p.logs.map((l) => l[1]));
}

// enrich, and a panic becoming a trap with a logged message
{
  const p = await load("enrich");
  assert.equal(init(p, [["set.env", "prod"], ["size_property", "size"], ["tag_from", "kind"]]), 1);
  const { entries, batch } = transform(p, [
    { body: "hello", props: [["kind", "created"]], tag: "old" },
    { body: "", tag: "keep" },
  ], { ingress: false });
  assert.equal(entries[0].tag, "created");
  assert.deepEqual(entries[0].props, [["kind", "created"], ["env", "prod"], ["size", "5"]]);
  assert.equal(entries[0].addrs[3], batch.addrs[0][3]);
  assert.equal(entries[1].tag, "keep");
  assert.deepEqual(entries[1].props, [["env", "prod"], ["size", "0"]]);
  assert.equal(init(await load("enrich"), []), 0);

  const q = await load("enrich"); // no init: the transform panics
  const { len } = writeBatch(q, [{ body: "x" }]);
  assert.throws(() => q.ex.quiver_transform(len), WebAssembly.RuntimeError);
  assert.ok(q.logs.some(([l, t]) => l === 1 && t.includes("no settings")), q.logs);
  console.log("enrich ok", p.logs.map((l) => l[1]), q.logs.map((l) => l[1]));
}
console.log("smoke: 3 passed, 0 failed");

// The pure parts: SSE parsing, event decoding, the model, level input, and
// that the extension packages into a .vsix offline.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { test } from "node:test";

import { decodeEvent, parseSse } from "../src/events";
import { MeshModel, describeRow, parseLevel } from "../src/model";

async function* chunks(parts: string[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) {
    yield new TextEncoder().encode(p);
  }
}

test("SSE: events split across chunks, comments, CRLF, multi-line data", async () => {
  const got = [];
  for await (const m of parseSse(
    chunks([": keep-alive\n\nevent: sta", "tus\ndata: {\"a\":\r\ndata: 1}\r\n\r\n", "data: x\n\n", "event: e\n"]),
  )) {
    got.push(m);
  }
  assert.deepEqual(got, [
    { event: "status", data: '{"a":\n1}' },
    { event: "message", data: "x" },
  ]);
});

test("decodeEvent ignores unknown types and bad JSON", () => {
  assert.equal(decodeEvent({ event: "future_thing", data: '{"type":"future_thing"}' }), undefined);
  assert.equal(decodeEvent({ event: "status", data: "not json" }), undefined);
  const e = decodeEvent({ event: "cell_left", data: '{"type":"cell_left","peer_id":"p","cell_id":"c"}' });
  assert.deepEqual(e, { type: "cell_left", peer_id: "p", cell_id: "c" });
});

test("the model follows a snapshot and events", () => {
  const m = new MeshModel();
  assert.equal(m.statusText(), "AIOS: connecting…");
  m.apply({
    type: "snapshot",
    local: { cell_id: "me", peer_id: "P0", branch: "main", consciousness_level: 0.5, seq: 1, listen_addrs: [] },
    peers: [
      {
        peer_id: "P1",
        cell_id: "one",
        branch: "main",
        consciousness_level: 1,
        seq: 1,
        addresses: [],
        found_by: "mdns",
        connected: true,
        state: "alive",
        rtt_ms: 0.42,
        last_seen_ms: 0,
        agent: null,
      },
    ],
  });
  assert.equal(m.statusText(), "AIOS me 0.5 · 1 alive");
  m.apply({ type: "cell_joined", peer_id: "P2", cell_id: null });
  m.apply({ type: "level_changed", peer_id: "P2", cell_id: "two", level: 3, old_level: null, self: false });
  m.apply({ type: "level_changed", peer_id: "P0", cell_id: "me", level: 0.9, old_level: 0.5, self: true });
  assert.equal(m.statusText(), "AIOS me 0.9 · 2 alive");
  m.apply({ type: "cell_failed", peer_id: "P1", cell_id: "one" });
  m.apply({ type: "status", status: "degraded", reason: "clone", peers: 1, peers_alive: 1 });
  assert.equal(m.statusText(), "AIOS me 0.9 · 1 alive $(warning)");
  const rows = m.cells();
  assert.deepEqual(
    rows.map((r) => [r.cellId, r.state, Boolean(r.self)]),
    [
      ["me", "alive", true],
      ["two", "alive", false],
      ["one", "failed", false],
    ],
  );
  assert.equal(describeRow(rows[0]!), "level 0.9 · this cell");
  assert.equal(describeRow(rows[2]!), "level 1.0 · failed · 0.4 ms · mdns");
  // A cell first heard of by an event: how it was found is not known yet.
  assert.equal(describeRow(rows[1]!), "level 3.0 · alive · unknown");
  // Mean of this cell (0.9) and the alive one (3); the failed one is out.
  assert.equal(m.networkLevel(), (0.9 + 3) / 2);
});

test("the model takes status from /health (not in the snapshot) and forgets on clear()", () => {
  const m = new MeshModel();
  assert.equal(m.networkLevel(), null);
  m.apply({
    type: "snapshot",
    local: { cell_id: "me", peer_id: "P0", branch: "main", consciousness_level: 2, seq: 1, listen_addrs: [] },
    peers: [],
  });
  m.applyHealth({ status: "degraded", reason: "another cell is using this cell's identity", peer_id: "OTHER" });
  assert.equal(m.status, "healthy", "an answer from another identity is ignored");
  m.applyHealth({ status: "degraded", reason: "another cell is using this cell's identity", peer_id: "P0" });
  assert.equal(m.statusText(), "AIOS me 2.0 · 0 alive $(warning)");
  assert.equal(m.networkLevel(), 2);
  m.clear();
  assert.equal(m.statusText(), "AIOS: connecting…");
  assert.deepEqual(m.cells(), []);
  assert.equal(m.status, "healthy");
});

test("level input", () => {
  assert.deepEqual(parseLevel(" 0.8 "), { level: 0.8 });
  assert.ok("error" in parseLevel("-1"));
  assert.ok("error" in parseLevel("abc"));
  assert.ok("error" in parseLevel("Infinity"));
  assert.ok("error" in parseLevel(""));
});

test("the extension packages into a .vsix offline", () => {
  const root = path.resolve(__dirname, "..", "..");
  const dir = mkdtempSync(path.join(tmpdir(), "aios-vsix-"));
  try {
    const out = path.join(dir, "aios-cell.vsix");
    const vsce = path.join(root, "node_modules", ".bin", process.platform === "win32" ? "vsce.cmd" : "vsce");
    execFileSync(vsce, ["package", "--no-dependencies", "--allow-missing-repository", "--out", out], { cwd: root, stdio: "pipe" });
    // A .vsix is a zip: list it with Node alone (no unzip on the machine).
    const listing = listZip(out);
    for (const f of ["extension/package.json", "extension/out/src/extension.js", "extension/out/src/client.js", "extension/out/src/events.js"]) {
      assert.ok(listing.includes(f), `${f} missing from the .vsix: ${listing.join(", ")}`);
    }
    assert.ok(!listing.some((f) => f.includes("node_modules") || f.includes("/test/")), listing.join(", "));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Names in a zip's central directory. */
function listZip(file: string): string[] {
  const buf = readFileSync(file);
  const eocd = buf.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  assert.ok(eocd >= 0, "not a zip");
  const count = buf.readUInt16LE(eocd + 10);
  let off = buf.readUInt32LE(eocd + 16);
  const names: string[] = [];
  for (let i = 0; i < count; i++) {
    const nameLen = buf.readUInt16LE(off + 28);
    const extraLen = buf.readUInt16LE(off + 30);
    const commentLen = buf.readUInt16LE(off + 32);
    names.push(buf.toString("utf8", off + 46, off + 46 + nameLen));
    off += 46 + nameLen + extraLen + commentLen;
  }
  return names;
}

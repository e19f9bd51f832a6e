// The pure parts: SSE parsing, event decoding, the model, level input, and
// that the extension packages into a .vsix offline.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { test } from "node:test";

import { decodeEvent, parseSse } from "../src/events";
import { PeerEntry } from "../src/client";
import {
  MeshModel,
  buildUrl,
  describeRow,
  describeService,
  escapeMarkdown,
  hostOf,
  parseLevel,
  parseServiceIndex,
  parseServices,
  parseTags,
  safeUrl,
} from "../src/model";

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
  const sc = decodeEvent({ event: "services_changed", data: '{"type":"services_changed","peer_id":"p","cell_id":"c","tags":{},"services":[],"self":false}' });
  assert.equal(sc?.type, "services_changed");
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

function peer(id: string, name: string, extra: Record<string, unknown> = {}): PeerEntry {
  return {
    peer_id: id,
    cell_id: name,
    branch: "main",
    consciousness_level: 0.5,
    seq: 1,
    addresses: [],
    found_by: "config",
    connected: true,
    state: "alive",
    rtt_ms: null,
    last_seen_ms: 0,
    agent: null,
    ...extra,
  } as PeerEntry;
}

const LOCAL = { cell_id: "me", peer_id: "P0", branch: "main", consciousness_level: 0.5, seq: 1, listen_addrs: [] };

test("services: parsing keeps what is usable and never throws", () => {
  for (const bad of [undefined, null, "grafana=3000", 3, {}, { name: "x" }]) {
    assert.deepEqual(parseServices(bad), [], JSON.stringify(bad));
  }
  assert.deepEqual(
    parseServices([
      null,
      7,
      "grafana",
      { name: "" },
      { name: 5, port: 1 },
      { name: "vault", port: 70000, protocol: "HTTP", status: "sideways" },
      { name: "grafana", port: 3000, protocol: "http", status: "up" },
      { name: "grafana", port: 1, protocol: "tcp", status: "down" }, // a repeated name: the first stays
      { name: " db ", port: 5432.5, status: "down" },
    ]),
    [
      { name: "db", port: null, protocol: "tcp", status: "down" },
      { name: "grafana", port: 3000, protocol: "http", status: "up" },
      { name: "vault", port: null, protocol: "http", status: "unknown" },
    ],
  );
  assert.deepEqual(parseTags({ role: "desktop", n: 3, o: {} }), { role: "desktop" });
  assert.deepEqual(parseTags(["role"]), {});
  assert.deepEqual(parseTags(undefined), {});
});

test("services: cells from before services (no fields, or odd ones) show none", () => {
  const m = new MeshModel();
  m.apply({
    type: "snapshot",
    local: LOCAL,
    peers: [peer("P1", "old"), peer("P2", "odd", { services: "metrics=9091", tags: "role=x" })],
  });
  m.applyHealth({ status: "healthy", reason: null, peer_id: "P0" });
  m.applyServices({ error: "no route for GET /services" }); // an older cell's 404 body
  m.applyServices(undefined);
  for (const c of m.cells()) {
    assert.deepEqual(m.servicesOf(c), [], c.cellId ?? "");
    assert.deepEqual(c.tags, {});
  }
  assert.equal(m.servicesSummary(), null);
  assert.deepEqual(m.liveServices(), []);
});

test("services: each cell's services with status and URL; the summary counts the alive cells' down ones", () => {
  const m = new MeshModel();
  m.selfHost = "192.168.1.10";
  m.apply({
    type: "snapshot",
    local: LOCAL,
    peers: [
      peer("P1", "desktop", {
        addresses: ["/ip4/127.0.0.1/tcp/8001", "/ip4/10.0.0.2/tcp/8001"],
        tags: { role: "desktop" },
        services: [
          { name: "grafana", port: 3000, protocol: "http", status: "up" },
          { name: "prometheus", port: 9090, protocol: "http", status: "down" },
          { name: "ssh", port: 22, protocol: "tcp", status: "down" },
        ],
      }),
      peer("P2", "gone", {
        state: "failed",
        addresses: ["/ip6/fd00::2/tcp/8001"],
        services: [{ name: "vault", port: 8200, protocol: "https", status: "down" }],
      }),
    ],
  });
  // Nothing about this cell's own services yet: only the peers' count.
  assert.equal(m.servicesSummary(), "2 services down: prometheus on desktop, ssh on desktop");
  m.applyHealth({
    status: "healthy",
    peer_id: "P0",
    tags: { role: "laptop" },
    services: [
      { name: "metrics", port: 9091, protocol: "http", status: "up" },
      { name: "vault", port: 8200, protocol: "http", status: "down" },
    ],
  });
  const [me, desktop, gone] = m.cells();
  assert.deepEqual(me!.tags, { role: "laptop" });
  assert.deepEqual(desktop!.tags, { role: "desktop" });
  // Without GET /services: URLs from the endpoint's host (this cell) and the first non-loopback address.
  assert.deepEqual(
    m.servicesOf(me!).map((s) => [s.name, s.url, describeService(s)]),
    [
      ["metrics", "http://192.168.1.10:9091/", "up · http 9091"],
      ["vault", "http://192.168.1.10:8200/", "down · http 8200"],
    ],
  );
  assert.deepEqual(
    m.servicesOf(desktop!).map((s) => [s.name, s.url, s.cellAlive]),
    [
      ["grafana", "http://10.0.0.2:3000/", true],
      ["prometheus", "http://10.0.0.2:9090/", true],
      ["ssh", null, true], // tcp: nothing to open
    ],
  );
  const [vault] = m.servicesOf(gone!);
  assert.equal(vault!.url, "https://[fd00::2]:8200/");
  assert.equal(describeService(vault!), "last known down · https 8200");
  // The failed cell's service is not counted; this cell's is.
  assert.equal(m.servicesSummary(), "3 services down: vault on me, prometheus on desktop, ssh on desktop");
  assert.equal(m.liveServices().length, 5);

  // GET /services: its URLs win; one that is not http(s) is never used.
  m.applyServices({
    services: {
      grafana: [{ cell_id: "desktop", peer_id: "P1", address: "10.0.0.9", port: 3000, protocol: "http", status: "up", url: "http://10.0.0.9:3000/" }],
      prometheus: [{ cell_id: "desktop", peer_id: "P1", address: "10.0.0.9", port: 9090, protocol: "http", status: "down", url: "javascript:alert(1)" }],
      vault: [{ cell_id: "me", peer_id: "P0", address: "0.0.0.0", port: 8200, protocol: "http", status: "down", url: "http://0.0.0.0:8200/" }],
    },
  });
  assert.deepEqual(
    m.servicesOf(m.cells()[1]!).map((s) => s.url),
    ["http://10.0.0.9:3000/", "http://10.0.0.9:9090/", null],
  );
  assert.equal(m.servicesOf(m.cells()[0]!)[1]!.url, "http://192.168.1.10:8200/", "the unspecified address is no URL");

  // Everything up: the summary says so.
  m.refresh([peer("P1", "desktop", { services: [{ name: "grafana", port: 3000, protocol: "http", status: "up" }] })]);
  m.applyHealth({ status: "healthy", peer_id: "P0", services: [{ name: "metrics", port: 9091, protocol: "http", status: "up" }] });
  assert.equal(m.servicesSummary(), "2 services, none down");
  m.applyHealth({ status: "healthy", peer_id: "P0", services: [{ name: "metrics", port: 9091, protocol: "http", status: "unknown" }] });
  assert.equal(m.servicesSummary(), "2 services, none down (1 not checked yet)");
  // One down is singular.
  m.refresh([peer("P1", "desktop", { services: [{ name: "grafana", port: 3000, protocol: "http", status: "down" }] })]);
  assert.equal(m.servicesSummary(), "1 service down: grafana on desktop");

  m.clear();
  assert.equal(m.servicesSummary(), null);
});

test("services: services_changed events update a cell's services, or this cell's own", () => {
  const m = new MeshModel();
  m.apply({ type: "snapshot", local: LOCAL, peers: [peer("P1", "desktop")] });
  assert.equal(m.servicesSummary(), null);
  const changed = (e: Record<string, unknown>) =>
    m.apply({ type: "services_changed", cell_id: null, self: false, ...e } as Parameters<MeshModel["apply"]>[0]);
  assert.equal(
    changed({ peer_id: "P1", cell_id: "desktop", tags: { role: "desktop" }, services: [{ name: "web", port: 80, protocol: "http", status: "down" }] }),
    true,
  );
  assert.equal(changed({ peer_id: "P0", self: true, services: [{ name: "metrics", port: 9091, protocol: "http", status: "up" }] }), true);
  assert.equal(m.servicesSummary(), "1 service down: web on desktop");
  assert.deepEqual(m.cells()[1]!.tags, { role: "desktop" });
  // Unknown cells wait for the next GET /peers; junk fields are no services.
  assert.equal(changed({ peer_id: "P9", services: [{ name: "x", port: 1, protocol: "tcp", status: "down" }] }), false);
  assert.equal(changed({ peer_id: 7, services: [] }), false);
  assert.equal(changed({ peer_id: "P1", services: "web=80", tags: null }), true);
  assert.deepEqual(m.cells()[1]!.services, []);
  assert.deepEqual(m.cells()[1]!.tags, {});
  assert.equal(m.servicesSummary(), "1 service, none down");
  assert.equal(m.cells().length, 2);
});

test("services: a cell whose /health lacks them takes its own from GET /services", () => {
  const m = new MeshModel();
  m.apply({ type: "snapshot", local: LOCAL, peers: [] });
  m.applyServices({
    services: {
      metrics: [{ cell_id: "me", peer_id: "P0", address: "10.0.0.1", port: 9091, protocol: "http", status: "down", url: "http://10.0.0.1:9091/" }],
    },
  });
  assert.deepEqual(
    m.servicesOf(m.cells()[0]!).map((s) => [s.name, s.status, s.url]),
    [["metrics", "down", "http://10.0.0.1:9091/"]],
  );
  assert.equal(m.servicesSummary(), "1 service down: metrics on me");
});

test("services: URLs, hosts and Markdown escaping", () => {
  assert.equal(safeUrl("http://10.0.0.2:3000/"), "http://10.0.0.2:3000/");
  assert.equal(safeUrl("https://grafana.lan"), "https://grafana.lan/");
  for (const bad of ["file:///etc/passwd", "javascript:alert(1)", "command:aios.showLog", "http://[::]:80/", "not a url", 42, null]) {
    assert.equal(safeUrl(bad), null, String(bad));
  }
  assert.equal(buildUrl({ protocol: "http", port: 3000 }, "10.0.0.2"), "http://10.0.0.2:3000/");
  assert.equal(buildUrl({ protocol: "https", port: 8443 }, "fe80::1"), "https://[fe80::1]:8443/");
  assert.equal(buildUrl({ protocol: "tcp", port: 22 }, "10.0.0.2"), null);
  assert.equal(buildUrl({ protocol: "http", port: null }, "10.0.0.2"), null);
  assert.equal(buildUrl({ protocol: "http", port: 3000 }, null), null);
  assert.equal(hostOf(["/ip4/127.0.0.1/tcp/1", "/ip4/0.0.0.0/tcp/1", "/dns4/desk.lan/tcp/8001"]), "desk.lan");
  assert.equal(hostOf(["/ip4/127.0.0.1/tcp/1"]), "127.0.0.1");
  assert.equal(hostOf(["/p2p-circuit"]), null);
  assert.equal(hostOf("nope"), null);
  assert.equal(escapeMarkdown("svc-a.lan"), "svc-a.lan");
  assert.equal(escapeMarkdown("a*b_[x](y)<img>`c`"), "a\\*b\\_\\[x\\](y)\\<img\\>\\`c\\`");
  const idx = parseServiceIndex({ services: { grafana: "x", web: [{ peer_id: "P", address: "h", port: 80, protocol: "http", status: "up" }] } });
  assert.deepEqual([...idx.urls.values()], ["http://h/"]);
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

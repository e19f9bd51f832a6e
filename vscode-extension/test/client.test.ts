// The extension's HTTP and SSE client against real cells started from this
// repository's build (see cell.ts), with Node's test runner.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, test } from "node:test";

import { CellAuthError, CellClient, CellHttpError, CellUnreachableError, CellError } from "../src/client";
import { CellEvent, EventStream, StreamState } from "../src/events";
import { MeshModel } from "../src/model";
import { TestCell, freePort, waitFor } from "./cell";

describe("against two real cells", () => {
  let a: TestCell;
  let b: TestCell;

  before(async () => {
    a = await TestCell.start({ name: "ext-a" });
    b = await TestCell.start({ name: "ext-b", peers: await a.p2pAddr() });
    const client = new CellClient(a.endpoint);
    await waitFor("a and b to connect", 15_000, async () => {
      const p = await client.peers();
      return p.peers.some((e) => e.cell_id === "ext-b" && e.state === "alive" && e.connected) ? true : undefined;
    });
  });

  after(async () => {
    await Promise.all([a?.dispose(), b?.dispose()]);
  });

  test("connect: /health names the cell", async () => {
    const h = await new CellClient(a.endpoint + "/").health();
    assert.equal(h.cell_id, "ext-a");
    assert.equal(h.status, "healthy");
    assert.equal(h.peers_alive, 1);
  });

  test("sync without a level is the seed's call and keeps the level", async () => {
    const client = new CellClient(a.endpoint);
    const before = (await client.health()).consciousness_level;
    const r = await client.sync();
    assert.equal(r.status, "synced");
    assert.equal(r.level, before);
    assert.equal(r.old_level, before);
  });

  test("sync with a level sets it", async () => {
    const client = new CellClient(a.endpoint);
    const r = await client.sync(2.5);
    assert.equal(r.level, 2.5);
    assert.equal((await client.health()).consciousness_level, 2.5);
  });

  test("a bad level is the cell's 422 with its message", async () => {
    const err = await new CellClient(a.endpoint).sync(-1).catch((e: unknown) => e);
    assert.ok(err instanceof CellHttpError, String(err));
    assert.equal(err.status, 422);
    assert.match(err.detail, /level/);
  });

  test("the event stream delivers a level change made on another cell", async () => {
    const events: CellEvent[] = [];
    const model = new MeshModel();
    const stream = new EventStream(a.endpoint, {
      onEvent: (e) => {
        events.push(e);
        model.apply(e);
      },
    });
    stream.start();
    try {
      await waitFor("the snapshot", 10_000, () => (events.some((e) => e.type === "snapshot") ? true : undefined));
      assert.equal(model.local?.cell_id, "ext-a");
      await new CellClient(b.endpoint).sync(7.25);
      const change = await waitFor("b's level_changed at a", 10_000, () =>
        events.find((e) => e.type === "level_changed" && e.cell_id === "ext-b" && e.level === 7.25),
      );
      assert.equal(change.type === "level_changed" && change.self, false);
      const row = model.cells().find((r) => r.cellId === "ext-b");
      assert.equal(row?.level, 7.25);
      assert.match(model.statusText(), /ext-a .* 1 alive/);
    } finally {
      await stream.stop();
    }
  });
});

test("the event stream reconnects with backoff after the cell restarts", async () => {
  const cell = await TestCell.start({ name: "ext-r" });
  const states: StreamState[] = [];
  const snapshots: number[] = [];
  const stream = new EventStream(cell.endpoint, {
    minBackoffMs: 100,
    maxBackoffMs: 1000,
    onEvent: (e) => {
      if (e.type === "snapshot") {
        snapshots.push(e.local.consciousness_level);
      }
    },
    onState: (s) => states.push(s),
  });
  stream.start();
  try {
    await waitFor("the first snapshot", 10_000, () => (snapshots.length >= 1 ? true : undefined));
    await new CellClient(cell.endpoint).sync(4.5);
    await cell.stop();
    await waitFor("the stream to notice", 10_000, () => (states.some((s) => s.kind === "waiting") ? true : undefined));
    // Down for a while: the client keeps retrying, with growing delays.
    await waitFor("several retries", 10_000, () =>
      states.filter((s) => s.kind === "waiting").length >= 3 ? true : undefined,
    );
    const waits = states.flatMap((s) => (s.kind === "waiting" ? [s.retryInMs] : []));
    assert.ok(waits[1]! > waits[0]!, `backoff grows: ${waits}`);
    await cell.restart();
    // A fresh snapshot from the restarted cell, which kept its level.
    await waitFor("a snapshot after the restart", 15_000, () => (snapshots.length >= 2 ? true : undefined));
    assert.equal(snapshots.at(-1), 4.5);
    assert.equal(states.at(-1)?.kind, "open");
  } finally {
    await stream.stop();
    await cell.dispose();
  }
});

test("an unreachable endpoint is a clear error", async () => {
  const port = await freePort(); // nothing listens there
  const err = await new CellClient(`http://127.0.0.1:${port}`, { timeoutMs: 3000 }).health().catch((e: unknown) => e);
  assert.ok(err instanceof CellUnreachableError, String(err));
  assert.match(err.message, /cannot reach the AIOS cell at http:\/\/127\.0\.0\.1:\d+ \(connection refused: nothing listens on that port\)/);
  assert.throws(() => new CellClient("aios.local:8000"), CellError);
});

test("the wrong port of a real cell is a clear error, for requests and the stream", async () => {
  const metricsPort = await freePort();
  const cell = await TestCell.start({ name: "ext-w", metricsPort });
  const states: StreamState[] = [];
  let stream: EventStream | undefined;
  try {
    // The metrics port answers 404 with an empty body: not the cell's API.
    const metrics = `http://127.0.0.1:${metricsPort}`;
    const err = await new CellClient(metrics).health().catch((e: unknown) => e);
    assert.ok(err instanceof CellHttpError, String(err));
    assert.equal(err.status, 404);
    assert.match(err.message, /not an aios-cell API answer: check that aios\.cellEndpoint is the cell's HTTP API/);
    stream = new EventStream(metrics, { minBackoffMs: 50, maxBackoffMs: 50, onEvent: () => undefined, onState: (s) => states.push(s) });
    stream.start();
    const waiting = await waitFor("the stream to give up on the metrics port", 5000, () => states.find((s) => s.kind === "waiting"));
    assert.match(waiting.kind === "waiting" ? waiting.error : "", /^GET \/events answered 404: .*not an aios-cell API answer/);
    assert.ok(!states.some((s) => s.kind === "open"));
    // The libp2p port takes the connection and drops the HTTP request.
    const p2p = (await cell.p2pAddr()).split("/")[4];
    const err2 = await new CellClient(`http://127.0.0.1:${p2p}`, { timeoutMs: 5000 }).health().catch((e: unknown) => e);
    assert.ok(err2 instanceof CellUnreachableError, String(err2));
    assert.match(err2.reason, /libp2p port|closed before an answer/);
  } finally {
    await stream?.stop();
    await cell.dispose();
  }
});

test("a stream that goes silent is closed and reopened (idle watchdog)", async () => {
  // A server that sends a snapshot and then nothing, not even keep-alives:
  // what a cell on a host that vanished looks like through a kept-open socket.
  let connections = 0;
  const server = createServer((_req, res) => {
    connections++;
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write(`event: snapshot\ndata: ${JSON.stringify({ type: "snapshot", local: { cell_id: "ghost", peer_id: "P", branch: "main", consciousness_level: 1, seq: 1, listen_addrs: [] }, peers: [] })}\n\n`);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  const states: StreamState[] = [];
  let snapshots = 0;
  const stream = new EventStream(`http://127.0.0.1:${port}`, {
    minBackoffMs: 50,
    idleTimeoutMs: 400,
    onEvent: (e) => void (e.type === "snapshot" && snapshots++),
    onState: (s) => states.push(s),
  });
  const started = Date.now();
  stream.start();
  try {
    const waiting = await waitFor("the watchdog", 5000, () => states.find((s) => s.kind === "waiting"));
    assert.equal(waiting.kind === "waiting" && waiting.error, "no data from the cell for 0.4 s");
    assert.ok(Date.now() - started >= 350, "not before the idle time");
    await waitFor("a second connection with a fresh snapshot", 5000, () => (connections >= 2 && snapshots >= 2 ? true : undefined));
  } finally {
    await stream.stop();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test("a server that is not a cell: no stream opens", async () => {
  const server = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<html>router admin</html>");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const states: StreamState[] = [];
  const stream = new EventStream(endpoint, { minBackoffMs: 50, onEvent: () => undefined, onState: (s) => states.push(s) });
  stream.start();
  try {
    const waiting = await waitFor("the refusal", 5000, () => states.find((s) => s.kind === "waiting"));
    assert.match(waiting.kind === "waiting" ? waiting.error : "", /answered text\/html, not an event stream/);
    assert.ok(!states.some((s) => s.kind === "open"));
    const err = await new CellClient(endpoint).health().catch((e: unknown) => e);
    assert.ok(err instanceof CellHttpError, String(err));
    assert.match(err.message, /not a JSON object .*is aios\.cellEndpoint an aios-cell/);
  } finally {
    await stream.stop();
    await new Promise((r) => server.close(r));
  }
});

test("a cell with a token: sync needs it, reads do not", async () => {
  const cell = await TestCell.start({ name: "ext-t", token: "s3cret-token" });
  try {
    const open = new CellClient(cell.endpoint);
    assert.equal((await open.health()).cell_id, "ext-t");
    const missing = await open.sync(1).catch((e: unknown) => e);
    assert.ok(missing instanceof CellAuthError, String(missing));
    assert.equal(missing.hadToken, false);
    assert.match(missing.message, /requires an API token/);
    const wrong = await new CellClient(cell.endpoint, { token: "nope" }).sync(1).catch((e: unknown) => e);
    assert.ok(wrong instanceof CellAuthError, String(wrong));
    assert.equal(wrong.hadToken, true);
    const ok = await new CellClient(cell.endpoint, { token: "s3cret-token" }).sync(1.75);
    assert.equal(ok.level, 1.75);
  } finally {
    await cell.dispose();
  }
});

// The extension's HTTP and SSE client against real cells started from this
// repository's build (see cell.ts), with Node's test runner.

import assert from "node:assert/strict";
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
  assert.match(err.message, /cannot reach the AIOS cell at http:\/\/127\.0\.0\.1:\d+ \(connection refused\)/);
  assert.throws(() => new CellClient("aios.local:8000"), CellError);
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

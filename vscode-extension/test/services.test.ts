// The services in the AIOS Cells view against real cells (the real
// activate() with the recorded `vscode` stand-in, as in extension.test.ts):
// svc-a announces a web server this test runs, svc-b one on a closed port.
// Each cell lists its services with their status; an http one opens in the
// browser; the status bar tooltip counts the services down, and follows a
// service going down and coming back.

import assert from "node:assert/strict";
import { Server, createServer } from "node:http";
import Module from "node:module";
import { after, before, test } from "node:test";

import { CellClient } from "../src/client";
import { CellEvent, EventStream } from "../src/events";
import { CELL_BIN, TestCell, freePort, waitFor } from "./cell";
import { Recorder, TreeItem } from "./vscode-stub";

const rec = new Recorder();
const moduleInternals = Module as unknown as { _load: (request: string, ...rest: unknown[]) => unknown };
const load = moduleInternals._load;
moduleInternals._load = function (request: string, ...rest: unknown[]) {
  return request === "vscode" ? rec.module() : load.call(this, request, ...rest);
};
const ext = require("../src/extension") as typeof import("../src/extension");

/** The cells check their services every few seconds; the view re-reads every 10 s and on events. */
const SERVICE_WAIT_MS = 40_000;

let a: TestCell;
let b: TestCell;
let web: Server | undefined;
let webPort: number;
let closedPort: number;
const context = rec.context();

function listen(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const srv = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok\n");
    });
    srv.once("error", reject);
    srv.listen(port, "127.0.0.1", () => resolve(srv));
  });
}

function close(srv: Server | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (!srv) {
      return resolve();
    }
    srv.closeAllConnections();
    srv.close(() => resolve());
  });
}

before(async () => {
  web = await listen(0);
  const addr = web.address();
  webPort = typeof addr === "object" && addr ? addr.port : 0;
  closedPort = await freePort(); // nothing listens there
  a = await TestCell.start({ name: "svc-a", services: `web=${webPort}/http,raw=${webPort}` });
  b = await TestCell.start({
    name: "svc-b",
    peers: await a.p2pAddr(),
    services: `gone=${closedPort}/http`,
    tags: "role=desktop",
  });
  const health = (await (await fetch(`${a.endpoint}/health`)).json()) as { services?: unknown };
  if (!Array.isArray(health.services)) {
    throw new Error(`${CELL_BIN} announces no services (no "services" in /health): it was built before them; run cargo build`);
  }
  rec.config.set("aios.cellEndpoint", a.endpoint);
  ext.activate(context as never);
});

after(async () => {
  await Promise.all(context.subscriptions.map((s) => s.dispose()));
  ext.deactivate();
  await Promise.all([a?.dispose(), b?.dispose(), close(web)]);
});

const tooltip = () => String(rec.status?.tooltip ?? "");

/** Waits until the view's lines (with children) match every pattern, in order. */
async function waitForTree(what: string, patterns: RegExp[]): Promise<string[]> {
  return waitFor(what, SERVICE_WAIT_MS, async () => {
    const lines = rec.rowsDeep();
    return lines.length === patterns.length && patterns.every((p, i) => p.test(lines[i]!)) ? lines : undefined;
  }).catch((e: unknown) => {
    throw new Error(`${String(e)}\nthe view:\n${rec.rowsDeep().join("\n")}\ntooltip: ${tooltip()}`);
  });
}

function item(cell: string, service: string): TreeItem {
  const found = rec.childItems(cell).find((i) => i.label === service);
  assert.ok(found, `${service} under ${cell}: ${rec.rowsDeep().join(" / ")}`);
  return found;
}

/** A tree item's icon as `id color`. */
function icon(i: TreeItem): string {
  const t = i.iconPath as { id: string; color?: { id: string } };
  return t.color ? `${t.id} ${t.color.id}` : t.id;
}

test("each cell lists its services with their status; the tooltip counts the one down", async () => {
  await waitForTree("both cells with their services checked", [
    /^svc-a \(this cell\) \| level 0\.5 · this cell$/,
    /^ {2}metrics \| up · http \d+$/,
    /^ {2}raw \| up · tcp \d+$/,
    /^ {2}web \| up · http \d+$/,
    /^svc-b \| level 0\.5 · alive · /,
    /^ {2}gone \| down · http \d+$/,
    /^ {2}metrics \| up · http \d+$/,
  ]);
  assert.equal(item("svc-a (this cell)", "web").description, `up · http ${webPort}`);
  assert.equal(item("svc-b", "gone").description, `down · http ${closedPort}`);
  await waitFor("the down count in the tooltip", SERVICE_WAIT_MS, () =>
    /1 service down: gone on svc-b/.test(tooltip()) ? true : undefined,
  );

  // Icons and menus by status and protocol.
  const webItem = item("svc-a (this cell)", "web");
  assert.equal(icon(webItem), "pass testing.iconPassed");
  assert.equal(webItem.contextValue, "aiosService.open");
  const gone = item("svc-b", "gone");
  assert.equal(icon(gone), "error testing.iconFailed");
  const raw = item("svc-a (this cell)", "raw");
  assert.equal(raw.command, undefined, "a tcp service has nothing to open");
  assert.equal(raw.contextValue, "aiosService");
  // Each http service opens the URL GET /services gives (the cell's address and the port),
  // once the view has read it (a status can come first, in an event).
  const answer = await new CellClient(a.endpoint).services();
  const withUrl = Object.entries(answer.services).flatMap(([name, eps]) => eps.filter((e) => e.url).map((e) => ({ name, ...e })));
  assert.deepEqual(withUrl.map((e) => `${e.cell_id}/${e.name}`).sort(), ["svc-a/metrics", "svc-a/web", "svc-b/gone", "svc-b/metrics"]);
  assert.equal(answer.services.raw?.[0]?.url, undefined, "tcp: no URL");
  const urlOf = (cell: string, name: string) => item(cell === "svc-a" ? "svc-a (this cell)" : "svc-b", name).command?.arguments?.[0];
  await waitFor("the URLs of GET /services in the view", 15_000, () =>
    withUrl.every((e) => urlOf(e.cell_id!, e.name) === e.url) ? true : undefined,
  ).catch((e: unknown) => {
    throw new Error(`${String(e)}: ${withUrl.map((x) => `${x.cell_id}/${x.name} ${x.url} vs ${urlOf(x.cell_id!, x.name)}`).join("; ")}`);
  });

  // A cell with services is expanded, and its tags are in its tooltip.
  const cellB = rec.tree!.getTreeItem(rec.tree!.getChildren()[1]);
  assert.equal(cellB.collapsibleState, 2);
  assert.match(String(cellB.tooltip), /tags: role=desktop/);
});

test("an http service opens in the browser: by its line, its menu, or the Command Palette", async () => {
  const webItem = item("svc-a (this cell)", "web");
  assert.equal(webItem.command?.command, "aios.openService");
  await rec.commands.get(webItem.command!.command)!(...(webItem.command!.arguments ?? []));
  assert.equal(rec.opened.at(-1), `http://127.0.0.1:${webPort}/`);
  // It really is the server this test runs.
  assert.equal(await (await fetch(rec.opened.at(-1)!)).text(), "ok\n");

  // The inline menu passes the tree element itself.
  const cellB = rec.tree!.getChildren()[1];
  const goneRow = rec.tree!.getChildren(cellB).find((r) => rec.tree!.getTreeItem(r).label === "gone");
  await rec.commands.get("aios.openService")!(goneRow);
  assert.equal(rec.opened.at(-1), `http://127.0.0.1:${closedPort}/`);

  // From the palette: a pick of every http(s) service of the alive cells.
  rec.quickPicks.push("web");
  await rec.commands.get("aios.openService")!();
  assert.deepEqual(
    rec.quickPickItems.at(-1)!.map((i) => `${i.label} ${i.description}`).sort(),
    ["gone svc-b · down", "metrics svc-a · up", "metrics svc-b · up", "web svc-a · up"],
  );
  assert.equal(rec.opened.at(-1), `http://127.0.0.1:${webPort}/`);
  const before = rec.opened.length;
  rec.quickPicks.push(undefined); // Escape
  await rec.commands.get("aios.openService")!();
  assert.equal(rec.opened.length, before);
});

test("a service that goes down and comes back: the view and the tooltip follow", async () => {
  // The event the view follows, as the stream delivers it.
  const events: CellEvent[] = [];
  const stream = new EventStream(a.endpoint, { onEvent: (e) => events.push(e) });
  stream.start();
  after(() => stream.stop());
  await waitFor("the snapshot", 10_000, () => (events.some((e) => e.type === "snapshot") ? true : undefined));
  await close(web);
  web = undefined;
  await waitFor("services_changed with web down", SERVICE_WAIT_MS, () =>
    events.some(
      (e) =>
        e.type === "services_changed" &&
        e.self &&
        e.services?.some((s) => s.name === "web" && s.status === "down"),
    )
      ? true
      : undefined,
  );
  await waitForTree("web down", [
    /^svc-a \(this cell\) /,
    /^ {2}metrics \| up /,
    /^ {2}raw \| down /,
    /^ {2}web \| down · http \d+$/,
    /^svc-b /,
    /^ {2}gone \| down /,
    /^ {2}metrics \| up /,
  ]);
  await waitFor("3 down in the tooltip", SERVICE_WAIT_MS, () =>
    /3 services down: raw on svc-a, web on svc-a, gone on svc-b/.test(tooltip()) ? true : undefined,
  );
  web = await listen(webPort);
  await waitFor("web up again", SERVICE_WAIT_MS, () =>
    /1 service down: gone on svc-b/.test(tooltip()) && item("svc-a (this cell)", "web").description === `up · http ${webPort}`
      ? true
      : undefined,
  );
});

test("a cell that stops: its services stay as last known and leave the count", async () => {
  await b.stop();
  await waitFor("svc-b not alive, its service out of the count", SERVICE_WAIT_MS, () =>
    /3 services, none down/.test(tooltip()) && rec.rowsDeep().some((l) => /^ {2}gone \| last known down · http \d+$/.test(l))
      ? true
      : undefined,
  ).catch((e: unknown) => {
    throw new Error(`${String(e)}\nthe view:\n${rec.rowsDeep().join("\n")}\ntooltip: ${tooltip()}`);
  });
  assert.doesNotMatch(tooltip(), /gone on svc-b/);
  assert.equal(icon(item("svc-b", "gone")), "circle-outline");
});

// The extension's VS Code glue (src/extension.ts) run for real against real
// cells, with a recorded stand-in for the `vscode` module (vscode-stub.ts):
// the status bar and the AIOS Cells view follow the mesh live, the commands
// declared in package.json exist and do what they say, errors are messages.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import Module from "node:module";
import * as path from "node:path";
import { after, before, test } from "node:test";

import { CellClient } from "../src/client";
import { TestCell, waitFor } from "./cell";
import { MarkdownString, Recorder } from "./vscode-stub";

const rec = new Recorder();
// Hand the stub to `require("vscode")` in src/extension.ts.
const moduleInternals = Module as unknown as { _load: (request: string, ...rest: unknown[]) => unknown };
const load = moduleInternals._load;
moduleInternals._load = function (request: string, ...rest: unknown[]) {
  return request === "vscode" ? rec.module() : load.call(this, request, ...rest);
};
const ext = require("../src/extension") as typeof import("../src/extension");

const manifest = JSON.parse(readFileSync(path.resolve(__dirname, "..", "..", "package.json"), "utf8")) as {
  contributes: {
    commands: { command: string }[];
    menus: Record<string, { command: string }[]>;
    views: Record<string, { id: string }[]>;
  };
};

let a: TestCell;
let b: TestCell;
const context = rec.context();

before(async () => {
  a = await TestCell.start({ name: "ui-a" });
  b = await TestCell.start({ name: "ui-b", peers: await a.p2pAddr() });
  rec.config.set("aios.cellEndpoint", a.endpoint);
  ext.activate(context as never);
});

after(async () => {
  // Dispose as VS Code does; a stream left open would keep this process alive.
  await Promise.all(context.subscriptions.map((s) => s.dispose()));
  ext.deactivate();
  await Promise.all([a?.dispose(), b?.dispose()]);
});

const statusText = () => rec.status?.text ?? "";
const tooltip = () => String(rec.status?.tooltip ?? "");

test("every command in package.json is registered, and the view is the one declared", () => {
  const declared = manifest.contributes.commands.map((c) => c.command).sort();
  assert.deepEqual([...rec.commands.keys()].sort(), declared);
  for (const m of Object.values(manifest.contributes.menus).flat()) {
    assert.ok(rec.commands.has(m.command), `menu command ${m.command}`);
  }
  assert.deepEqual(Object.values(manifest.contributes.views).flat().map((v) => v.id), ["aiosCells"]);
  assert.ok(rec.status?.shown);
});

test("the status bar shows this cell's level and the alive count, live", async () => {
  await waitFor("ui-a with ui-b alive in the status bar", 15_000, () =>
    /ui-a 0\.5 · 1 alive/.test(statusText()) ? true : undefined,
  );
  assert.equal(rec.status?.command, "aios.syncConsciousness");
  assert.match(tooltip(), /network level 0\.5/);
  await new CellClient(a.endpoint).sync(0.9); // changed outside VS Code
  await waitFor("the new level", 10_000, () => (/ui-a 0\.9 · 1 alive/.test(statusText()) ? true : undefined));
});

test("the AIOS Cells view lists every cell with level, state, round trip and how it was found", async () => {
  // ui-b dialed ui-a, so ui-a lists it as "inbound"; the round trip comes from GET /peers.
  await waitFor("ui-b's row with a round-trip time", 15_000, async () => {
    await rec.commands.get("aios.refreshCells")!();
    const rows = rec.rows();
    return rows.length === 2 && /^ui-b \| level 0\.5 · alive · [\d.]+ ms · inbound$/.test(rows[1]!) ? true : undefined;
  });
  assert.match(rec.rows()[0]!, /^ui-a \(this cell\) \| level 0\.9 · this cell$/);
  // Every cell has its metrics service; a cell with nothing else starts collapsed.
  const [self, other] = rec.tree!.getChildren();
  assert.equal(rec.tree!.getTreeItem(self).collapsibleState, 1);
  assert.equal(rec.tree!.getTreeItem(other).collapsibleState, 1);
  assert.deepEqual(
    rec.childItems("ui-a (this cell)").map((i) => i.label),
    ["metrics"],
  );
  await new CellClient(b.endpoint).sync(3);
  await waitFor("ui-b's new level in the view", 10_000, () =>
    rec.rows().some((r) => r.startsWith("ui-b | level 3.0 · alive")) ? true : undefined,
  );
  assert.equal(rec.treeView?.message, undefined);
});

test("Sync Consciousness asks for a level, or re-announces with none", async () => {
  rec.inputs.push("0.75");
  await rec.commands.get("aios.syncConsciousness")!();
  assert.equal(rec.inputPrompts.at(-1)?.value, "0.9", "the prompt starts from the current level");
  assert.match(rec.info.at(-1)!, /^Consciousness synced: 0\.75 \(network [\d.]+, sent to 1 cells\)$/);
  await waitFor("0.75 in the status bar", 10_000, () => (/ui-a 0\.75 /.test(statusText()) ? true : undefined));

  rec.inputs.push("");
  await rec.commands.get("aios.syncConsciousness")!();
  assert.match(rec.info.at(-1)!, /^Consciousness synced: 0\.75 /);

  const prompt = rec.inputPrompts.at(-1)!;
  assert.match(prompt.validateInput!("-2") ?? "", /negative/);
  assert.match(prompt.validateInput!("high") ?? "", /not a number/);

  const before = rec.info.length;
  rec.inputs.push(undefined); // Escape: nothing is sent
  await rec.commands.get("aios.syncConsciousness")!();
  assert.equal(rec.info.length, before);
});

test("an error answer is a message with the cell's own words", async () => {
  await rec.commands.get("aios.syncConsciousness")!(-1);
  assert.match(rec.errors.at(-1)!, /^Failed to sync consciousness: the AIOS cell answered 422: .*level/);
});

test("Connect to Cell names the cell; the view goes offline and comes back when the cell restarts", async () => {
  rec.inputs.push(a.endpoint + "/"); // the current endpoint, as typed
  await rec.commands.get("aios.connectToCell")!();
  assert.match(rec.info.at(-1)!, /^Connected to AIOS Cell: ui-a \(level 0\.75, 1 other cells alive, healthy\)$/);

  await a.stop();
  await waitFor("offline in the status bar", 10_000, () => (/AIOS: offline/.test(statusText()) ? true : undefined));
  assert.equal(rec.status?.command, "aios.connectToCell");
  assert.match(rec.treeView?.message ?? "", /^Cannot reach the cell at http:\/\/127\.0\.0\.1:\d+: .*retrying in/);
  assert.deepEqual(rec.rows(), [], "no stale rows while offline");

  await rec.commands.get("aios.connectToCell")!(a.endpoint);
  assert.match(rec.errors.at(-1)!, /^Failed to connect to AIOS Cell: cannot reach the AIOS cell at .*connection refused/);

  await a.restart();
  await waitFor("ui-a back in the status bar", 20_000, () => (/ui-a 0\.75 · 1 alive/.test(statusText()) ? true : undefined));
  assert.equal(rec.treeView?.message, undefined);
});

test("a cell that needs a token: the error offers to set it, SecretStorage keeps it", async () => {
  const t = await TestCell.start({ name: "ui-t", token: "tok-123" });
  try {
    await rec.commands.get("aios.connectToCell")!(t.endpoint);
    assert.equal(rec.config.get("aios.cellEndpoint"), t.endpoint);
    await waitFor("ui-t in the status bar", 15_000, () => (/ui-t 0\.5 · 0 alive/.test(statusText()) ? true : undefined));

    rec.errorPicks.push("Set API Token"); // press the button on the error
    rec.inputs.push("tok-123");
    await rec.commands.get("aios.syncConsciousness")!(2);
    assert.match(rec.errors.at(-1)!, /requires an API token .*AIOS: Set API Token/);
    assert.equal(rec.secrets.get("aios.apiToken"), "tok-123");
    assert.equal(rec.inputPrompts.at(-1)?.password, true);

    await rec.commands.get("aios.syncConsciousness")!(2);
    assert.match(rec.info.at(-1)!, /^Consciousness synced: 2\.0 /);
    await waitFor("level 2 in the status bar", 10_000, () => (/ui-t 2\.0 /.test(statusText()) ? true : undefined));

    await rec.commands.get("aios.clearApiToken")!();
    assert.equal(rec.secrets.has("aios.apiToken"), false);
    rec.errorPicks.push(undefined);
    await rec.commands.get("aios.syncConsciousness")!(3);
    assert.match(rec.errors.at(-1)!, /requires an API token/);
    assert.match(tooltip(), /needs an API token/);
  } finally {
    await t.dispose();
  }
});

test("Open Service in Browser opens http and https URLs only", async () => {
  await rec.commands.get("aios.openService")!("http://127.0.0.1:3000/");
  assert.equal(rec.opened.at(-1), "http://127.0.0.1:3000/");
  const opened = rec.opened.length;
  for (const bad of ["javascript:alert(1)", "file:///etc/passwd", "command:aios.showLog", "http://0.0.0.0:3000/"]) {
    await rec.commands.get("aios.openService")!(bad);
    assert.match(rec.errors.at(-1)!, /^Cannot open the service: .* is not an http or https URL with a host to open\.$/, bad);
  }
  // A service line whose cell sent no usable address has nothing to open either.
  await rec.commands.get("aios.openService")!({ kind: "service", url: null });
  assert.match(rec.errors.at(-1)!, /^Cannot open the service: null /);
  assert.equal(rec.opened.length, opened);
});

test("a bad endpoint setting is a clear message, not a crash", async () => {
  rec.config.set("aios.cellEndpoint", "aios.local:8000");
  await rec.commands.get("aios.connectToCell")!("aios.local:8000");
  assert.match(rec.errors.at(-1)!, /"aios\.local:8000" is not (a|an http\(s\)) URL/);
  assert.ok(rec.status?.tooltip instanceof MarkdownString || typeof rec.status?.tooltip === "string");
});

// VS Code glue: commands, the status bar item, the "AIOS Cells" tree, the
// API token in SecretStorage. The HTTP and SSE logic lives in client.ts and
// events.ts (tested without VS Code).

import * as vscode from "vscode";

import { CellAuthError, CellClient, CellError, CellUnreachableError } from "./client";
import { EventStream, StreamState } from "./events";
import { CellRow, MeshModel, describeRow, formatLevel, parseLevel } from "./model";

const TOKEN_KEY = "aios.apiToken";
/** Round-trip times are not in the event stream: refresh /peers this often while connected. */
const PEERS_REFRESH_MS = 10_000;

class CellsTree implements vscode.TreeDataProvider<CellRow> {
  private readonly changed = new vscode.EventEmitter<CellRow | undefined>();
  readonly onDidChangeTreeData = this.changed.event;

  constructor(private readonly model: MeshModel) {}

  refresh(): void {
    this.changed.fire(undefined);
  }

  getTreeItem(r: CellRow): vscode.TreeItem {
    const item = new vscode.TreeItem(r.cellId ?? r.peerId.slice(0, 16) + "…");
    item.description = describeRow(r);
    item.tooltip = new vscode.MarkdownString(
      [
        `**${r.cellId ?? "(no record yet)"}**`,
        `peer id: \`${r.peerId}\``,
        `level: ${formatLevel(r.level)}`,
        `state: ${r.state}${r.connected ? ", connected" : ""}${r.relayed ? " (through a relay)" : ""}`,
        `round trip: ${r.rttMs === null ? "unknown" : r.rttMs.toFixed(2) + " ms"}`,
        `found by: ${r.foundBy}`,
      ].join("  \n"),
    );
    item.iconPath = new vscode.ThemeIcon(
      r.state === "alive" ? "pass-filled" : r.state === "failed" ? "error" : "circle-slash",
    );
    return item;
  }

  getChildren(element?: CellRow): CellRow[] {
    return element ? [] : this.model.cells();
  }
}

class Connection implements vscode.Disposable {
  private stream: EventStream | undefined;
  private peersTimer: NodeJS.Timeout | undefined;
  private refreshSoon: NodeJS.Timeout | undefined;
  private lastError: string | undefined;

  constructor(
    readonly model: MeshModel,
    private readonly context: vscode.ExtensionContext,
    private readonly status: vscode.StatusBarItem,
    private readonly tree: CellsTree,
  ) {}

  endpoint(): string {
    return vscode.workspace.getConfiguration("aios").get<string>("cellEndpoint", "http://aios.local:8000");
  }

  async client(): Promise<CellClient> {
    const token = await this.context.secrets.get(TOKEN_KEY);
    return new CellClient(this.endpoint(), { token });
  }

  /** (Re)starts the live connection to the configured cell. */
  async restart(): Promise<void> {
    await this.stopStream();
    this.model.local = undefined;
    this.model.refresh([]);
    this.render();
    let stream: EventStream;
    try {
      stream = new EventStream(this.endpoint(), {
        onEvent: (e) => {
          this.model.apply(e);
          this.render();
          this.schedulePeersRefresh();
        },
        onState: (s) => this.onState(s),
      });
    } catch (e) {
      this.lastError = e instanceof Error ? e.message : String(e);
      this.render();
      return;
    }
    this.stream = stream;
    stream.start();
    this.peersTimer = setInterval(() => void this.refreshPeers(), PEERS_REFRESH_MS);
  }

  retryNow(): void {
    this.stream?.retryNow();
  }

  private onState(s: StreamState): void {
    if (s.kind === "open") {
      this.lastError = undefined;
    } else if (s.kind === "waiting") {
      this.lastError = `${s.error}; retrying in ${Math.round(s.retryInMs / 100) / 10} s`;
      this.model.local = undefined;
    }
    this.render();
  }

  private schedulePeersRefresh(): void {
    if (this.refreshSoon) {
      return;
    }
    this.refreshSoon = setTimeout(() => {
      this.refreshSoon = undefined;
      void this.refreshPeers();
    }, 300);
  }

  async refreshPeers(): Promise<void> {
    if (!this.model.local) {
      return;
    }
    try {
      const peers = await (await this.client()).peers();
      this.model.refresh(peers.peers);
      this.render();
    } catch {
      // The event stream reports an unreachable cell.
    }
  }

  render(): void {
    if (this.model.local) {
      this.status.text = this.model.statusText();
      this.status.tooltip = `${this.endpoint()}: ${this.model.status}${this.model.reason ? ` (${this.model.reason})` : ""}. Click to sync.`;
      this.status.backgroundColor =
        this.model.status === "degraded" ? new vscode.ThemeColor("statusBarItem.warningBackground") : undefined;
    } else {
      this.status.text = this.lastError ? "$(debug-disconnect) AIOS: offline" : "$(sync~spin) AIOS: connecting…";
      this.status.tooltip = this.lastError ? `${this.endpoint()}: ${this.lastError}` : this.endpoint();
      this.status.backgroundColor = undefined;
    }
    this.tree.refresh();
  }

  private async stopStream(): Promise<void> {
    if (this.peersTimer) {
      clearInterval(this.peersTimer);
      this.peersTimer = undefined;
    }
    if (this.refreshSoon) {
      clearTimeout(this.refreshSoon);
      this.refreshSoon = undefined;
    }
    const s = this.stream;
    this.stream = undefined;
    await s?.stop();
  }

  dispose(): void {
    void this.stopStream();
  }
}

function explain(action: string, e: unknown): string {
  if (e instanceof CellAuthError || e instanceof CellUnreachableError || e instanceof CellError) {
    return `${action}: ${e.message}`;
  }
  return `${action}: ${e instanceof Error ? e.message : String(e)}`;
}

async function showError(action: string, e: unknown): Promise<void> {
  if (e instanceof CellAuthError) {
    const pick = await vscode.window.showErrorMessage(explain(action, e), "Set API Token");
    if (pick) {
      await vscode.commands.executeCommand("aios.setApiToken");
    }
    return;
  }
  void vscode.window.showErrorMessage(explain(action, e));
}

export function activate(context: vscode.ExtensionContext): void {
  const status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Left, 100);
  status.command = "aios.syncConsciousness";
  status.show();
  const model = new MeshModel();
  const tree = new CellsTree(model);
  const conn = new Connection(model, context, status, tree);
  context.subscriptions.push(status, conn, vscode.window.registerTreeDataProvider("aiosCells", tree));

  context.subscriptions.push(
    vscode.commands.registerCommand("aios.connectToCell", async () => {
      try {
        const h = await (await conn.client()).health();
        void vscode.window.showInformationMessage(
          `Connected to AIOS Cell: ${h.cell_id} (level ${formatLevel(h.consciousness_level)}, ${h.peers_alive} cells alive, ${h.status})`,
        );
        conn.retryNow();
      } catch (e) {
        await showError("Failed to connect to AIOS Cell", e);
      }
    }),
    vscode.commands.registerCommand("aios.syncConsciousness", async () => {
      const current = conn.model.local?.consciousness_level;
      const input = await vscode.window.showInputBox({
        title: "AIOS: Sync Consciousness",
        prompt: "New consciousness level, or leave empty to re-announce the current one",
        value: current === undefined ? "" : String(current),
        validateInput: (v) => {
          if (v.trim() === "") {
            return undefined;
          }
          const p = parseLevel(v);
          return "error" in p ? p.error : undefined;
        },
      });
      if (input === undefined) {
        return; // cancelled
      }
      const parsed = input.trim() === "" ? undefined : parseLevel(input);
      if (parsed && "error" in parsed) {
        return;
      }
      try {
        const r = await (await conn.client()).sync(parsed?.level);
        void vscode.window.showInformationMessage(
          `Consciousness synced: ${formatLevel(r.level)} (network ${formatLevel(r.network_level)}, sent to ${r.reached} cells)`,
        );
      } catch (e) {
        await showError("Failed to sync consciousness", e);
      }
    }),
    vscode.commands.registerCommand("aios.setApiToken", async () => {
      const token = await vscode.window.showInputBox({
        title: "AIOS: API token",
        prompt: "The cell's AIOS_API_TOKEN (kept in VS Code's secret storage)",
        password: true,
        ignoreFocusOut: true,
      });
      if (token) {
        await context.secrets.store(TOKEN_KEY, token.trim());
        void vscode.window.showInformationMessage("AIOS API token saved.");
      }
    }),
    vscode.commands.registerCommand("aios.clearApiToken", async () => {
      await context.secrets.delete(TOKEN_KEY);
      void vscode.window.showInformationMessage("AIOS API token removed.");
    }),
    vscode.commands.registerCommand("aios.refreshCells", () => conn.refreshPeers()),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration("aios.cellEndpoint")) {
        void conn.restart();
      }
    }),
  );
  void conn.restart();
}

export function deactivate(): void {
  // Subscriptions (the connection included) are disposed by VS Code.
}

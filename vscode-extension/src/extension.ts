// VS Code glue: commands, the status bar item, the "AIOS Cells" tree, the
// API token in SecretStorage. The HTTP and SSE logic lives in client.ts and
// events.ts, the state in model.ts (all tested without VS Code).

import * as vscode from "vscode";

import { CellAuthError, CellClient, CellError, CellHttpError, normalizeEndpoint } from "./client";
import { EventStream, StreamState } from "./events";
import {
  CellRow,
  MeshModel,
  ServiceRow,
  describeRow,
  describeService,
  escapeMarkdown,
  formatLevel,
  parseLevel,
  safeUrl,
} from "./model";

const TOKEN_KEY = "aios.apiToken";
const DEFAULT_ENDPOINT = "http://aios.local:8000";
/**
 * Round-trip times and service checks are not in the event stream: re-read
 * /peers, /services and /health this often (the status bar counts services
 * down, so also while the view is closed).
 */
const PEERS_REFRESH_MS = 10_000;
/** Bursts of events (a cell joining sends several) make one /peers read. */
const PEERS_DEBOUNCE_MS = 300;

/** A line of the tree: a cell, or one of its services under it. */
type Node = CellRow | ServiceRow;

class CellsTree implements vscode.TreeDataProvider<Node> {
  private readonly changed = new vscode.EventEmitter<Node | undefined>();
  readonly onDidChangeTreeData = this.changed.event;

  constructor(private readonly model: MeshModel) {}

  refresh(): void {
    this.changed.fire(undefined);
  }

  getTreeItem(n: Node): vscode.TreeItem {
    return n.kind === "service" ? this.serviceItem(n) : this.cellItem(n);
  }

  private cellItem(r: CellRow): vscode.TreeItem {
    const name = r.cellId ?? r.peerId.slice(0, 16) + "…";
    // Open when it announces more than its metrics port (which every cell has),
    // so a mesh of plain cells stays one line per cell.
    const item = new vscode.TreeItem(
      r.self ? `${name} (this cell)` : name,
      r.services.length === 0
        ? vscode.TreeItemCollapsibleState.None
        : r.services.some((s) => s.name !== "metrics")
          ? vscode.TreeItemCollapsibleState.Expanded
          : vscode.TreeItemCollapsibleState.Collapsed,
    );
    item.id = r.peerId;
    item.description = describeRow(r);
    const tags = Object.entries(r.tags).map(([k, v]) => `${k}=${v}`);
    item.tooltip = new vscode.MarkdownString(
      [
        `**${r.cellId ?? "(no record yet)"}**${r.self ? " (this cell)" : ""}`,
        `peer id: \`${r.peerId}\``,
        `level: ${formatLevel(r.level)}`,
        `state: ${r.state}${r.connected && !r.self ? ", connected" : ""}${r.relayed ? " (through a relay)" : ""}`,
        ...(r.self ? [] : [`round trip: ${r.rttMs === null ? "unknown" : r.rttMs.toFixed(2) + " ms"}`, `found by: ${r.foundBy}`]),
        ...(tags.length > 0 ? [`tags: ${escapeMarkdown(tags.join(", "))}`] : []),
      ].join("  \n"),
    );
    item.iconPath = new vscode.ThemeIcon(
      r.self ? "home" : r.state === "alive" ? "pass-filled" : r.state === "failed" ? "error" : "circle-slash",
    );
    item.contextValue = r.self ? "aiosSelf" : `aiosCell.${r.state}`;
    return item;
  }

  private serviceItem(s: ServiceRow): vscode.TreeItem {
    const item = new vscode.TreeItem(s.name, vscode.TreeItemCollapsibleState.None);
    item.id = `${s.peerId}/service/${s.name}`;
    item.description = describeService(s);
    const cell = s.cellId ?? s.peerId.slice(0, 16) + "…";
    item.tooltip = new vscode.MarkdownString(
      [
        `**${escapeMarkdown(s.name)}** on ${escapeMarkdown(cell)}`,
        `status: ${s.status}${s.cellAlive ? " (checked by its cell)" : " (last known: the cell is not alive)"}`,
        `protocol: ${escapeMarkdown(s.protocol)}${s.port === null ? "" : `, port ${s.port}`}`,
        ...(s.url ? [`${escapeMarkdown(s.url)}: click to open in the browser`] : []),
      ].join("  \n"),
    );
    item.iconPath = !s.cellAlive
      ? new vscode.ThemeIcon("circle-outline")
      : s.status === "up"
        ? new vscode.ThemeIcon("pass", new vscode.ThemeColor("testing.iconPassed"))
        : s.status === "down"
          ? new vscode.ThemeIcon("error", new vscode.ThemeColor("testing.iconFailed"))
          : new vscode.ThemeIcon("question");
    if (s.url) {
      item.command = { command: "aios.openService", title: "Open in Browser", arguments: [s.url] };
    }
    item.contextValue = s.url ? "aiosService.open" : "aiosService";
    return item;
  }

  getChildren(element?: Node): Node[] {
    if (!element) {
      return this.model.cells();
    }
    return element.kind === "cell" ? this.model.servicesOf(element) : [];
  }
}

/** The live link to the configured cell: the event stream and what it feeds. */
class Connection implements vscode.Disposable {
  private stream: EventStream | undefined;
  private peersTimer: NodeJS.Timeout | undefined;
  private refreshSoon: NodeJS.Timeout | undefined;
  private state: StreamState | undefined;
  private lastError: string | undefined;
  /** Set after a 401: the tooltip then says a token is needed. */
  needsToken = false;
  /** Restarts run one after another, so two quick setting changes never leave two streams. */
  private restarting: Promise<void> = Promise.resolve();

  constructor(
    readonly model: MeshModel,
    private readonly context: vscode.ExtensionContext,
    private readonly status: vscode.StatusBarItem,
    private readonly tree: CellsTree,
    private readonly view: vscode.TreeView<Node>,
    private readonly log: vscode.OutputChannel,
  ) {}

  endpoint(): string {
    return vscode.workspace.getConfiguration("aios").get<string>("cellEndpoint", DEFAULT_ENDPOINT);
  }

  async client(): Promise<CellClient> {
    const token = await this.context.secrets.get(TOKEN_KEY);
    return new CellClient(this.endpoint(), { token });
  }

  /** (Re)starts the live connection to the configured cell. */
  restart(): Promise<void> {
    this.restarting = this.restarting.then(() => this.doRestart());
    return this.restarting;
  }

  private async doRestart(): Promise<void> {
    await this.stopStream();
    this.model.clear();
    this.needsToken = false;
    this.state = undefined;
    this.lastError = undefined;
    const endpoint = this.endpoint();
    this.model.selfHost = hostOfEndpoint(endpoint);
    let stream: EventStream;
    try {
      stream = new EventStream(endpoint, {
        onEvent: (e) => {
          this.model.apply(e);
          if (e.type === "snapshot") {
            void this.readHealth();
          }
          this.render();
          this.schedulePeersRefresh();
        },
        onState: (s) => this.onState(s),
      });
    } catch (e) {
      this.lastError = e instanceof Error ? e.message : String(e);
      this.log.appendLine(`not connecting: ${this.lastError}`);
      this.render();
      return;
    }
    this.log.appendLine(`connecting to ${endpoint}`);
    this.stream = stream;
    stream.start();
    this.peersTimer = setInterval(() => void this.refreshPeers(), PEERS_REFRESH_MS);
    this.render();
  }

  retryNow(): void {
    this.stream?.retryNow();
  }

  private onState(s: StreamState): void {
    const was = this.state?.kind;
    this.state = s;
    if (s.kind === "open") {
      this.lastError = undefined;
      this.log.appendLine(`connected to ${this.endpoint()}`);
    } else if (s.kind === "waiting") {
      this.lastError = s.error;
      // Keep nothing stale on screen: the snapshot after the reconnect fills it again.
      this.model.clear();
      if (was !== "waiting" || s.attempt <= 2) {
        this.log.appendLine(`${this.endpoint()}: ${s.error}; retrying in ${formatSeconds(s.retryInMs)}`);
      }
    }
    this.render();
  }

  /** `status` and `reason` are not in the snapshot. */
  private async readHealth(): Promise<void> {
    try {
      this.model.applyHealth(await (await this.client()).health());
      this.render();
    } catch {
      // The event stream reports an unreachable cell.
    }
  }

  private schedulePeersRefresh(): void {
    if (this.refreshSoon) {
      return;
    }
    this.refreshSoon = setTimeout(() => {
      this.refreshSoon = undefined;
      void this.refreshPeers();
    }, PEERS_DEBOUNCE_MS);
  }

  /**
   * Re-reads `/peers` (round trips, the peers' services), `/services` (their
   * URLs) and `/health` (this cell's own services). A cell from before
   * services answers `/services` with a 404: no URLs, nothing else changes.
   */
  async refreshPeers(): Promise<void> {
    if (!this.model.local) {
      return;
    }
    let client: CellClient;
    try {
      client = await this.client();
    } catch {
      return; // a bad endpoint: the stream says so
    }
    const [peers, services, health] = await Promise.allSettled([client.peers(), client.services(), client.health()]);
    const me = this.model.local?.peer_id;
    if (!me) {
      return;
    }
    // Answers from the cell we show (not one restarted with another identity in between).
    if (peers.status === "fulfilled" && peers.value.peer_id === me) {
      this.model.refresh(peers.value.peers);
    }
    if (health.status === "fulfilled") {
      this.model.applyHealth(health.value);
    }
    if (services.status === "fulfilled") {
      this.model.applyServices(services.value);
    } else if (services.reason instanceof CellHttpError && services.reason.status === 404) {
      this.model.applyServices(undefined);
    }
    // An unreachable cell: the event stream reports it.
    this.render();
  }

  render(): void {
    const endpoint = this.endpoint();
    const m = this.model;
    if (m.local) {
      this.status.text = `$(broadcast) ${m.statusText()}`;
      const services = m.servicesSummary();
      const tip = new vscode.MarkdownString(
        [
          `**AIOS cell ${m.local.cell_id}** at ${endpoint}`,
          `level ${formatLevel(m.local.consciousness_level)} · network level ${formatLevel(m.networkLevel())} · branch ${m.local.branch}`,
          `${m.alive()} other cells alive · ${m.status}${m.reason ? `: ${m.reason}` : ""}`,
          ...(services ? [escapeMarkdown(services)] : []),
          ...(this.needsToken ? ["This cell needs an API token for changes: run **AIOS: Set API Token**."] : []),
          "Click to sync the level.",
        ].join("  \n"),
      );
      this.status.tooltip = tip;
      this.status.command = "aios.syncConsciousness";
      this.status.backgroundColor =
        m.status === "degraded" ? new vscode.ThemeColor("statusBarItem.warningBackground") : undefined;
      this.view.message = m.status === "degraded" && m.reason ? `Degraded: ${m.reason}` : undefined;
    } else if (this.lastError) {
      const retry = this.state?.kind === "waiting" ? `; retrying in ${formatSeconds(this.state.retryInMs)}` : "";
      this.status.text = "$(debug-disconnect) AIOS: offline";
      this.status.tooltip = `${endpoint}: ${this.lastError}${retry}. Click to connect.`;
      this.status.command = "aios.connectToCell";
      this.status.backgroundColor = new vscode.ThemeColor("statusBarItem.errorBackground");
      this.view.message = `Cannot reach the cell at ${endpoint}: ${this.lastError}${retry}.`;
    } else {
      this.status.text = "$(sync~spin) AIOS: connecting…";
      this.status.tooltip = `Connecting to ${endpoint}`;
      this.status.command = "aios.connectToCell";
      this.status.backgroundColor = undefined;
      this.view.message = `Connecting to ${endpoint}…`;
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

  dispose(): Promise<void> {
    // Wait for a restart in flight, else it would open a stream after this.
    return this.restarting.then(() => this.stopStream());
  }
}

/** The host name of the endpoint (IPv6 without brackets), or null for a bad one. */
function hostOfEndpoint(endpoint: string): string | null {
  try {
    const host = new URL(normalizeEndpoint(endpoint)).hostname;
    return host.startsWith("[") ? host.slice(1, -1) : host || null;
  } catch {
    return null;
  }
}

/**
 * What "open" was given: a URL (a service line's click), a service line (its
 * context menu), or nothing (the Command Palette: pick one).
 */
async function openService(arg: unknown, conn: Connection): Promise<void> {
  let url: string | null | undefined;
  if (typeof arg === "string") {
    url = arg;
  } else if (arg && typeof arg === "object" && (arg as { kind?: unknown }).kind === "service") {
    url = (arg as ServiceRow).url;
  } else {
    const open = conn.model.liveServices().filter((s) => s.url);
    if (open.length === 0) {
      void vscode.window.showInformationMessage("No cell announces an http or https service that can be opened.");
      return;
    }
    const pick = await vscode.window.showQuickPick(
      open.map((s) => ({ label: s.name, description: `${s.cellId ?? s.peerId} · ${s.status}`, detail: s.url ?? "", url: s.url })),
      { title: "AIOS: Open Service in Browser", matchOnDescription: true },
    );
    if (!pick) {
      return; // cancelled
    }
    url = pick.url;
  }
  const safe = safeUrl(url);
  if (!safe) {
    const shown = JSON.stringify(url ?? null);
    void vscode.window.showErrorMessage(`Cannot open the service: ${shown} is not an http or https URL with a host to open.`);
    return;
  }
  const opened = await vscode.env.openExternal(vscode.Uri.parse(safe));
  if (!opened) {
    void vscode.window.showErrorMessage(`Could not open ${safe} in the browser.`);
  }
}

function formatSeconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

/** Shows a failed action; a 401 offers to set the token at once. */
async function showError(action: string, e: unknown, conn: Connection): Promise<void> {
  const text = `${action}: ${e instanceof Error ? e.message : String(e)}`;
  if (e instanceof CellAuthError) {
    conn.needsToken = true;
    conn.render();
    const pick = await vscode.window.showErrorMessage(text, "Set API Token");
    if (pick) {
      await vscode.commands.executeCommand("aios.setApiToken");
    }
    return;
  }
  if (!(e instanceof CellError)) {
    // A bug here rather than a cell's answer: keep the details.
    console.error(e);
  }
  void vscode.window.showErrorMessage(text);
}

export function activate(context: vscode.ExtensionContext): void {
  const status = vscode.window.createStatusBarItem("aios.status", vscode.StatusBarAlignment.Left, 100);
  status.name = "AIOS Cell";
  status.show();
  const log = vscode.window.createOutputChannel("AIOS");
  const model = new MeshModel();
  const tree = new CellsTree(model);
  const view = vscode.window.createTreeView("aiosCells", { treeDataProvider: tree, showCollapseAll: false });
  const conn = new Connection(model, context, status, tree, view, log);
  context.subscriptions.push(status, log, view, conn);

  context.subscriptions.push(
    // With an argument (another extension, a keybinding): connect to that
    // endpoint. From the palette: ask, with the current one filled in.
    vscode.commands.registerCommand("aios.connectToCell", async (arg?: unknown) => {
      const current = conn.endpoint();
      let endpoint = typeof arg === "string" ? arg : undefined;
      if (endpoint === undefined) {
        endpoint = await vscode.window.showInputBox({
          title: "AIOS: Connect to Cell",
          prompt: "The cell's HTTP API (aios-cell listens on port 8000)",
          value: current,
          ignoreFocusOut: true,
          validateInput: (v) => {
            try {
              normalizeEndpoint(v);
              return undefined;
            } catch (e) {
              return e instanceof Error ? e.message : String(e);
            }
          },
        });
        if (endpoint === undefined) {
          return; // cancelled
        }
      }
      let normalized: string;
      try {
        normalized = normalizeEndpoint(endpoint);
      } catch (e) {
        await showError("Failed to connect to AIOS Cell", e, conn);
        return;
      }
      if (normalized !== normalizeEndpointOr(current)) {
        // The settings watcher restarts the live connection.
        await vscode.workspace.getConfiguration("aios").update("cellEndpoint", normalized, vscode.ConfigurationTarget.Global);
      } else {
        conn.retryNow();
      }
      try {
        const h = await (await conn.client()).health();
        void vscode.window.showInformationMessage(
          `Connected to AIOS Cell: ${h.cell_id} (level ${formatLevel(h.consciousness_level)}, ` +
            `${h.peers_alive} other cells alive, ${h.status}${h.reason ? `: ${h.reason}` : ""})`,
        );
      } catch (e) {
        await showError("Failed to connect to AIOS Cell", e, conn);
      }
    }),
    // With a number argument: sync to that level without asking.
    vscode.commands.registerCommand("aios.syncConsciousness", async (arg?: unknown) => {
      let level: number | undefined;
      if (typeof arg === "number") {
        level = arg;
      } else {
        const current = conn.model.local?.consciousness_level;
        const input = await vscode.window.showInputBox({
          title: "AIOS: Sync Consciousness",
          prompt: "New consciousness level (a number ≥ 0), or leave empty to re-announce the current one",
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
        if (input.trim() !== "") {
          const parsed = parseLevel(input);
          if ("error" in parsed) {
            return; // the input box did not let it through
          }
          level = parsed.level;
        }
      }
      try {
        const r = await (await conn.client()).sync(level);
        conn.needsToken = false;
        void vscode.window.showInformationMessage(
          `Consciousness synced: ${formatLevel(r.level)} (network ${formatLevel(r.network_level)}, sent to ${r.reached} cells)`,
        );
      } catch (e) {
        await showError("Failed to sync consciousness", e, conn);
      }
    }),
    vscode.commands.registerCommand("aios.setApiToken", async () => {
      const token = await vscode.window.showInputBox({
        title: "AIOS: Set API Token",
        prompt: "The cell's AIOS_API_TOKEN (kept in VS Code's secret storage, sent only on changes)",
        password: true,
        ignoreFocusOut: true,
      });
      if (token && token.trim()) {
        await context.secrets.store(TOKEN_KEY, token.trim());
        conn.needsToken = false;
        conn.render();
        void vscode.window.showInformationMessage("AIOS API token saved.");
      }
    }),
    vscode.commands.registerCommand("aios.clearApiToken", async () => {
      await context.secrets.delete(TOKEN_KEY);
      void vscode.window.showInformationMessage("AIOS API token removed.");
    }),
    vscode.commands.registerCommand("aios.refreshCells", async () => {
      conn.retryNow();
      await conn.refreshPeers();
    }),
    vscode.commands.registerCommand("aios.openService", (arg?: unknown) => openService(arg, conn)),
    vscode.commands.registerCommand("aios.showLog", () => log.show(true)),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration("aios.cellEndpoint")) {
        void conn.restart();
      }
    }),
    view.onDidChangeVisibility((e) => {
      if (e.visible) {
        void conn.refreshPeers();
      }
    }),
  );
  void conn.restart();
}

function normalizeEndpointOr(endpoint: string): string {
  try {
    return normalizeEndpoint(endpoint);
  } catch {
    return endpoint;
  }
}

export function deactivate(): void {
  // Subscriptions (the connection included) are disposed by VS Code.
}

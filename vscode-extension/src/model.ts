// What the status bar and the tree show, kept from the cell's snapshot and
// events (and refreshed from GET /peers for round-trip times). Pure: no
// `vscode` import, unit-tested.

import { Health, PeerEntry, PeerState } from "./client";
import { CellEvent, LocalState } from "./events";

export type ServiceStatus = "up" | "down" | "unknown";

/** A service as a cell announces it, checked and normalised. */
export interface Service {
  name: string;
  /** null when the cell sent no usable port. */
  port: number | null;
  /** Lower case: `http`, `https`, `tcp` (or whatever a newer cell sends). */
  protocol: string;
  status: ServiceStatus;
}

/** One service line under a cell in the tree. */
export interface ServiceRow extends Service {
  kind: "service";
  /** The cell that announces it. */
  peerId: string;
  cellId: string | null;
  /** Its cell is this one or alive: its status is current, not last known. */
  cellAlive: boolean;
  /** What "open" opens: http and https services whose address is known. */
  url: string | null;
}

export interface CellRow {
  kind: "cell";
  /** This cell itself (first in the list), not a peer. */
  self?: boolean;
  peerId: string;
  cellId: string | null;
  level: number | null;
  state: PeerState;
  connected: boolean;
  rttMs: number | null;
  foundBy: string;
  relayed: boolean;
  tags: Record<string, string>;
  /** Empty for cells from before services. */
  services: Service[];
  /** A host to reach its services at when `GET /services` gave no URL. */
  address: string | null;
}

export class MeshModel {
  local: LocalState | undefined;
  status: "healthy" | "degraded" = "healthy";
  reason: string | null = null;
  /**
   * The host of the endpoint VS Code reaches this cell at: this cell's
   * services are there too, unless `GET /services` says otherwise.
   */
  selfHost: string | null = null;
  private rows = new Map<string, CellRow>();
  /** This cell's own services and tags (`/health`, or the snapshot when it has them). */
  private localServices: Service[] | undefined;
  private localTags: Record<string, string> = {};
  /** This cell's services from `GET /services`, for a cell whose `/health` lacks them. */
  private fallbackLocal: Service[] = [];
  /** URLs from `GET /services`, by `serviceKey(peer id, name)`. */
  private urls = new Map<string, string>();

  /** Applies an event; returns true when something shown changed. */
  apply(e: CellEvent): boolean {
    switch (e.type) {
      case "snapshot":
        this.local = e.local;
        if (e.local.services !== undefined) {
          this.localServices = parseServices(e.local.services);
        }
        if (e.local.tags !== undefined) {
          this.localTags = parseTags(e.local.tags);
        }
        this.rows = new Map(e.peers.map((p) => [p.peer_id, rowOf(p)]));
        return true;
      case "status":
        this.status = e.status;
        this.reason = e.reason;
        return true;
      case "level_changed":
        if (e.self) {
          if (this.local) {
            this.local = { ...this.local, consciousness_level: e.level };
          }
        } else {
          const row = this.row(e.peer_id, e.cell_id);
          row.level = e.level;
        }
        return true;
      case "services_changed": {
        // Fields are checked here: a stream event is not validated further.
        if (e.self || (this.local && e.peer_id === this.local.peer_id)) {
          this.localServices = parseServices(e.services);
          this.localTags = parseTags(e.tags);
        } else {
          // A cell not listed yet comes with the next GET /peers, services and all.
          const row = typeof e.peer_id === "string" ? this.rows.get(e.peer_id) : undefined;
          if (!row) {
            return false;
          }
          row.services = parseServices(e.services);
          row.tags = parseTags(e.tags);
        }
        return true;
      }
      case "cell_joined":
      case "cell_alive": {
        const row = this.row(e.peer_id, e.cell_id);
        row.state = "alive";
        return true;
      }
      case "cell_failed":
      case "cell_left": {
        const row = this.row(e.peer_id, e.cell_id);
        row.state = e.type === "cell_failed" ? "failed" : "left";
        return true;
      }
    }
  }

  /**
   * Takes the health fields the snapshot lacks (`status`, `reason`): a cell
   * that is already degraded when we connect sends no `status` event until
   * something changes. Also this cell's services and tags, when it sends them.
   */
  applyHealth(h: Pick<Health, "status" | "reason" | "peer_id" | "services" | "tags">): void {
    if (this.local && this.local.peer_id !== h.peer_id) {
      return; // an answer from before a restart with another identity
    }
    this.status = h.status;
    this.reason = h.reason ?? null;
    if (h.services !== undefined) {
      this.localServices = parseServices(h.services);
    }
    if (h.tags !== undefined) {
      this.localTags = parseTags(h.tags);
    }
  }

  /**
   * Takes the URLs of a `GET /services` answer (anything else, such as an
   * older cell's 404 body, leaves none). For this cell's own services, when
   * `/health` did not list them, the answer's entries stand in.
   */
  applyServices(answer: unknown): void {
    const index = parseServiceIndex(answer);
    this.urls = index.urls;
    if (this.localServices === undefined && this.local) {
      const mine = index.byPeer.get(this.local.peer_id);
      if (mine) {
        this.fallbackLocal = mine;
      }
    }
  }

  /** Forgets everything (another endpoint, or the cell went away). */
  clear(): void {
    this.local = undefined;
    this.status = "healthy";
    this.reason = null;
    this.rows = new Map();
    this.localServices = undefined;
    this.localTags = {};
    this.fallbackLocal = [];
    this.urls = new Map();
  }

  /** Replaces the rows with a fresh `GET /peers` answer (RTTs, found_by). */
  refresh(peers: PeerEntry[]): void {
    this.rows = new Map(peers.map((p) => [p.peer_id, rowOf(p)]));
  }

  /** This cell first, then alive, failed and left cells, each by name. */
  cells(): CellRow[] {
    const order: Record<PeerState, number> = { alive: 0, failed: 1, left: 2 };
    const peers = [...this.rows.values()]
      .filter((r) => r.peerId !== this.local?.peer_id)
      .sort((a, b) => order[a.state] - order[b.state] || (a.cellId ?? a.peerId).localeCompare(b.cellId ?? b.peerId));
    if (!this.local) {
      return peers;
    }
    const me: CellRow = {
      kind: "cell",
      self: true,
      peerId: this.local.peer_id,
      cellId: this.local.cell_id,
      level: this.local.consciousness_level,
      state: "alive",
      connected: true,
      rttMs: null,
      foundBy: "this cell",
      relayed: false,
      tags: this.localTags,
      services: this.localServices ?? this.fallbackLocal,
      address: this.selfHost,
    };
    return [me, ...peers];
  }

  /** A cell's services as tree lines, by name, each with what "open" opens. */
  servicesOf(cell: CellRow): ServiceRow[] {
    return cell.services.map((s) => ({
      ...s,
      kind: "service",
      peerId: cell.peerId,
      cellId: cell.cellId,
      cellAlive: cell.state === "alive",
      url: this.urls.get(serviceKey(cell.peerId, s.name)) ?? buildUrl(s, cell.address),
    }));
  }

  /** Every service of this cell and the alive cells (what the tooltip counts). */
  liveServices(): ServiceRow[] {
    return this.cells()
      .filter((c) => c.state === "alive")
      .flatMap((c) => this.servicesOf(c));
  }

  /**
   * The tooltip's services line: `2 services down: vault on laptop, grafana
   * on desktop`, `5 services, none down`, or null when no cell announces any.
   */
  servicesSummary(): string | null {
    const all = this.liveServices();
    if (all.length === 0) {
      return null;
    }
    const down = all.filter((s) => s.status === "down");
    if (down.length === 0) {
      const unknown = all.filter((s) => s.status === "unknown").length;
      return `${plural(all.length, "service")}, none down${unknown ? ` (${unknown} not checked yet)` : ""}`;
    }
    const MAX_NAMED = 5;
    const named = down.slice(0, MAX_NAMED).map((s) => `${s.name} on ${s.cellId ?? s.peerId.slice(0, 16) + "…"}`);
    const more = down.length > MAX_NAMED ? `, and ${down.length - MAX_NAMED} more` : "";
    return `${plural(down.length, "service")} down: ${named.join(", ")}${more}`;
  }

  /**
   * The mean level over this cell and every alive cell whose level is known
   * (the cell's own `network_level`).
   */
  networkLevel(): number | null {
    if (!this.local) {
      return null;
    }
    const levels = [this.local.consciousness_level];
    for (const r of this.rows.values()) {
      if (r.state === "alive" && r.level !== null && r.peerId !== this.local.peer_id) {
        levels.push(r.level);
      }
    }
    return levels.reduce((a, b) => a + b, 0) / levels.length;
  }

  alive(): number {
    return [...this.rows.values()].filter((r) => r.state === "alive").length;
  }

  /** The status bar text, e.g. `AIOS laptop 0.8 · 3 alive`. */
  statusText(): string {
    if (!this.local) {
      return "AIOS: connecting…";
    }
    const warn = this.status === "degraded" ? " $(warning)" : "";
    return `AIOS ${this.local.cell_id} ${formatLevel(this.local.consciousness_level)} · ${this.alive()} alive${warn}`;
  }

  private row(peerId: string, cellId: string | null): CellRow {
    let row = this.rows.get(peerId);
    if (!row) {
      row = {
        kind: "cell",
        peerId,
        cellId,
        level: null,
        state: "alive",
        connected: false,
        rttMs: null,
        foundBy: "unknown", // until the next GET /peers says
        relayed: false,
        tags: {},
        services: [],
        address: null,
      };
      this.rows.set(peerId, row);
    }
    if (cellId) {
      row.cellId = cellId;
    }
    return row;
  }
}

function rowOf(p: PeerEntry): CellRow {
  return {
    kind: "cell",
    peerId: p.peer_id,
    cellId: p.cell_id,
    level: p.consciousness_level,
    state: p.state,
    connected: p.connected,
    rttMs: p.rtt_ms,
    foundBy: p.found_by,
    relayed: Boolean(p.relayed),
    tags: parseTags(p.tags),
    services: parseServices(p.services),
    address: hostOf(p.addresses),
  };
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function serviceKey(peerId: string, name: string): string {
  return `${peerId}\n${name}`;
}

/**
 * A cell's `services` field, tolerant of anything: not a list (a cell from
 * before services) is none; entries without a name are skipped, a repeated
 * name keeps the first; a bad port is null, an unknown status "unknown".
 * Sorted by name.
 */
export function parseServices(raw: unknown): Service[] {
  if (!Array.isArray(raw)) {
    return [];
  }
  const byName = new Map<string, Service>();
  for (const entry of raw) {
    if (!entry || typeof entry !== "object") {
      continue;
    }
    const o = entry as Record<string, unknown>;
    const name = typeof o.name === "string" ? o.name.trim() : "";
    if (!name || byName.has(name)) {
      continue;
    }
    byName.set(name, {
      name,
      port: typeof o.port === "number" && Number.isInteger(o.port) && o.port > 0 && o.port < 65536 ? o.port : null,
      protocol: typeof o.protocol === "string" && o.protocol.trim() ? o.protocol.trim().toLowerCase() : "tcp",
      status: o.status === "up" || o.status === "down" ? o.status : "unknown",
    });
  }
  return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
}

/** A cell's `tags`: the string values of an object, nothing otherwise. */
export function parseTags(raw: unknown): Record<string, string> {
  const tags: Record<string, string> = {};
  if (raw && typeof raw === "object" && !Array.isArray(raw)) {
    for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
      if (typeof v === "string") {
        tags[k] = v;
      }
    }
  }
  return tags;
}

/**
 * A `GET /services` answer: the URL of each (cell, service) that has a safe
 * one (given, or built from its address), and the services by cell.
 */
export function parseServiceIndex(answer: unknown): { urls: Map<string, string>; byPeer: Map<string, Service[]> } {
  const urls = new Map<string, string>();
  const raw = new Map<string, unknown[]>();
  const services = answer && typeof answer === "object" ? (answer as { services?: unknown }).services : undefined;
  if (services && typeof services === "object" && !Array.isArray(services)) {
    for (const [name, endpoints] of Object.entries(services as Record<string, unknown>)) {
      if (!Array.isArray(endpoints)) {
        continue;
      }
      for (const ep of endpoints) {
        if (!ep || typeof ep !== "object") {
          continue;
        }
        const o = ep as Record<string, unknown>;
        if (typeof o.peer_id !== "string") {
          continue;
        }
        const [service] = parseServices([{ ...o, name }]);
        if (!service) {
          continue;
        }
        const url = safeUrl(o.url) ?? buildUrl(service, typeof o.address === "string" ? o.address : null);
        if (url) {
          urls.set(serviceKey(o.peer_id, service.name), url);
        }
        raw.set(o.peer_id, [...(raw.get(o.peer_id) ?? []), { ...o, name }]);
      }
    }
  }
  const byPeer = new Map([...raw].map(([peer, list]) => [peer, parseServices(list)]));
  return { urls, byPeer };
}

/**
 * The URL as a string when it is one a browser may be given: http or https
 * with a host other than the unspecified address. Anything else (another
 * scheme from a cell, a typo) is null.
 */
export function safeUrl(raw: unknown): string | null {
  if (typeof raw !== "string") {
    return null;
  }
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return null;
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || !url.hostname || UNSPECIFIED.has(url.hostname)) {
    return null;
  }
  return url.toString();
}

const UNSPECIFIED = new Set(["0.0.0.0", "[::]", "::"]);

/** `http://host:port/` for an http or https service at a known host. */
export function buildUrl(s: Pick<Service, "protocol" | "port">, host: string | null): string | null {
  if ((s.protocol !== "http" && s.protocol !== "https") || s.port === null || !host) {
    return null;
  }
  const h = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  return safeUrl(`${s.protocol}://${h}:${s.port}/`);
}

/**
 * A host from a cell's multiaddrs: the first IPv4, IPv6 or DNS one that is
 * not loopback, else a loopback one (then the cell shares this cell's host).
 */
export function hostOf(addresses: unknown): string | null {
  if (!Array.isArray(addresses)) {
    return null;
  }
  let loopback: string | null = null;
  for (const a of addresses) {
    const m = typeof a === "string" ? /^\/(ip4|ip6|dns|dns4|dns6)\/([^/]+)/.exec(a) : null;
    if (!m || UNSPECIFIED.has(m[2]!)) {
      continue;
    }
    const host = m[2]!;
    if (host === "::1" || host.startsWith("127.") || host === "localhost") {
      loopback ??= host;
      continue;
    }
    return host;
  }
  return loopback;
}

/** A service line's description: `up · http 3000`. */
export function describeService(s: ServiceRow): string {
  const status = s.cellAlive ? s.status : `last known ${s.status}`;
  return `${status} · ${s.protocol}${s.port === null ? "" : ` ${s.port}`}`;
}

/**
 * Text safe to put inside a line of a Markdown tooltip (names come from
 * other cells): emphasis, code, links, HTML and entities are escaped; a
 * hyphen or a dot in a name stays as it is (they mean something only at the
 * start of a line, where these texts never are).
 */
export function escapeMarkdown(text: string): string {
  return text.replace(/[\\`*_[\]<>~|&]/g, (c) => `\\${c}`);
}

export function formatLevel(level: number | null): string {
  if (level === null || !Number.isFinite(level)) {
    return "?";
  }
  return Number.isInteger(level) ? level.toFixed(1) : String(Math.round(level * 1000) / 1000);
}

/** One tree line's description: `level 0.8 · alive · 1.2 ms · mdns`. */
export function describeRow(r: CellRow): string {
  if (r.self) {
    return `level ${formatLevel(r.level)} · this cell`;
  }
  const rtt = r.rttMs === null ? "" : ` · ${r.rttMs < 10 ? r.rttMs.toFixed(1) : Math.round(r.rttMs)} ms`;
  const via = r.relayed ? `${r.foundBy}, relayed` : r.foundBy;
  return `level ${formatLevel(r.level)} · ${r.state}${rtt} · ${via}`;
}

/** Parses what a user typed as a level: a finite number ≥ 0, or an error. */
export function parseLevel(input: string): { level: number } | { error: string } {
  const t = input.trim();
  if (t === "") {
    return { error: "enter a number, e.g. 0.8" };
  }
  const n = Number(t);
  if (!Number.isFinite(n)) {
    return { error: `"${t}" is not a number` };
  }
  if (n < 0) {
    return { error: "the level cannot be negative" };
  }
  return { level: n };
}

// What the status bar and the tree show, kept from the cell's snapshot and
// events (and refreshed from GET /peers for round-trip times). Pure: no
// `vscode` import, unit-tested.

import { Health, PeerEntry, PeerState } from "./client";
import { CellEvent, LocalState } from "./events";

export interface CellRow {
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
}

export class MeshModel {
  local: LocalState | undefined;
  status: "healthy" | "degraded" = "healthy";
  reason: string | null = null;
  private rows = new Map<string, CellRow>();

  /** Applies an event; returns true when something shown changed. */
  apply(e: CellEvent): boolean {
    switch (e.type) {
      case "snapshot":
        this.local = e.local;
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
   * something changes.
   */
  applyHealth(h: Pick<Health, "status" | "reason" | "peer_id">): void {
    if (this.local && this.local.peer_id !== h.peer_id) {
      return; // an answer from before a restart with another identity
    }
    this.status = h.status;
    this.reason = h.reason ?? null;
  }

  /** Forgets everything (another endpoint, or the cell went away). */
  clear(): void {
    this.local = undefined;
    this.status = "healthy";
    this.reason = null;
    this.rows = new Map();
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
      self: true,
      peerId: this.local.peer_id,
      cellId: this.local.cell_id,
      level: this.local.consciousness_level,
      state: "alive",
      connected: true,
      rttMs: null,
      foundBy: "this cell",
      relayed: false,
    };
    return [me, ...peers];
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
        peerId,
        cellId,
        level: null,
        state: "alive",
        connected: false,
        rttMs: null,
        foundBy: "unknown", // until the next GET /peers says
        relayed: false,
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
    peerId: p.peer_id,
    cellId: p.cell_id,
    level: p.consciousness_level,
    state: p.state,
    connected: p.connected,
    rttMs: p.rtt_ms,
    foundBy: p.found_by,
    relayed: Boolean(p.relayed),
  };
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

// The cell's `GET /events` Server-Sent Events stream: a parser over fetch's
// body, and a connection that reconnects with backoff when the cell
// restarts. No `vscode` import.

import { PeerEntry, ServiceEntry, describeFetchError, errorDetail, normalizeEndpoint } from "./client";

/** This cell as the snapshot describes it. */
export interface LocalState {
  cell_id: string;
  peer_id: string;
  branch: string;
  consciousness_level: number;
  seq: number;
  listen_addrs: string[];
  reachability?: string;
  relays?: string[];
  /** When the cell sends them (newer cells; /health has them too). */
  tags?: Record<string, string>;
  services?: ServiceEntry[];
}

export type CellEvent =
  | { type: "snapshot"; local: LocalState; peers: PeerEntry[] }
  | { type: "cell_joined" | "cell_alive" | "cell_failed" | "cell_left"; peer_id: string; cell_id: string | null }
  | {
      type: "level_changed";
      peer_id: string;
      cell_id: string | null;
      level: number;
      old_level: number | null;
      self: boolean;
    }
  | {
      /** A cell's tags or services changed (a service went up or down); `self` for this cell's own. */
      type: "services_changed";
      peer_id: string;
      cell_id: string | null;
      tags?: Record<string, string>;
      services?: ServiceEntry[];
      self: boolean;
    }
  | { type: "status"; status: "healthy" | "degraded"; reason: string | null; peers: number; peers_alive: number };

/** One parsed SSE message: its `event:` name and joined `data:` lines. */
export interface SseMessage {
  event: string;
  data: string;
}

/**
 * Splits an SSE byte stream into messages (the WHATWG rules that matter
 * here: `event:`/`data:` fields, `:` comments, blank line ends a message,
 * CRLF or LF).
 */
export async function* parseSse(body: AsyncIterable<Uint8Array>): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "";
  let data: string[] = [];
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buffer.search(/\r?\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(buffer[nl] === "\r" ? nl + 2 : nl + 1);
      if (line === "") {
        if (data.length > 0) {
          yield { event: event || "message", data: data.join("\n") };
        }
        event = "";
        data = [];
        continue;
      }
      if (line.startsWith(":")) {
        continue; // keep-alive comment
      }
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) {
        value = value.slice(1);
      }
      if (field === "event") {
        event = value;
      } else if (field === "data") {
        data.push(value);
      }
    }
  }
}

export type StreamState =
  | { kind: "connecting"; attempt: number }
  | { kind: "open" }
  | { kind: "waiting"; attempt: number; retryInMs: number; error: string };

export interface EventStreamOptions {
  /** First reconnect delay, ms; doubles up to `maxBackoffMs`. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /**
   * The cell writes a keep-alive comment every 15 s, so a stream silent for
   * this long (default 45 s) is dead even though TCP did not say so (the
   * laptop slept, a NAT dropped the flow, the cell's host vanished): it is
   * closed and reopened.
   */
  idleTimeoutMs?: number;
  onEvent: (e: CellEvent) => void;
  onState?: (s: StreamState) => void;
}

/**
 * Keeps one `/events` connection open: on a drop (the cell restarting, a
 * slow reader cut off by the cell) it waits and reconnects, 0.5 s doubling
 * to 15 s, reset once a stream opens. Every (re)connection starts with a
 * fresh `snapshot`. `stop()` ends it for good.
 */
export class EventStream {
  readonly url: string;
  private readonly minBackoff: number;
  private readonly maxBackoff: number;
  private readonly idleTimeout: number;
  private readonly opts: EventStreamOptions;
  private abort: AbortController | undefined;
  private stopped = false;
  private running: Promise<void> | undefined;
  private wake: (() => void) | undefined;

  constructor(endpoint: string, opts: EventStreamOptions) {
    this.url = normalizeEndpoint(endpoint) + "/events";
    this.minBackoff = opts.minBackoffMs ?? 500;
    this.maxBackoff = opts.maxBackoffMs ?? 15_000;
    this.idleTimeout = opts.idleTimeoutMs ?? 45_000;
    this.opts = opts;
  }

  start(): void {
    if (!this.running) {
      this.running = this.loop();
    }
  }

  /** Stops and waits until the connection is closed. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.abort?.abort();
    this.wake?.();
    await this.running;
  }

  /** Skips the current backoff wait (e.g. the user asked to connect now). */
  retryNow(): void {
    this.wake?.();
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    let backoff = this.minBackoff;
    while (!this.stopped) {
      attempt += 1;
      this.opts.onState?.({ kind: "connecting", attempt });
      let error = "the cell closed the stream";
      const abort = new AbortController();
      this.abort = abort;
      let idle: NodeJS.Timeout | undefined;
      let idledOut = false;
      const kick = () => {
        clearTimeout(idle);
        idle = setTimeout(() => {
          idledOut = true;
          abort.abort();
        }, this.idleTimeout);
      };
      try {
        kick(); // also bounds the wait for the response headers
        const resp = await fetch(this.url, {
          headers: { accept: "text/event-stream" },
          signal: abort.signal,
        });
        const type = resp.headers.get("content-type") ?? "";
        if (!resp.ok) {
          const text = await resp.text().catch(() => "");
          error =
            resp.status === 404 && text.includes("no route")
              ? "this cell has no GET /events (an older aios-cell): update it for live updates"
              : `GET /events answered ${resp.status}: ${errorDetail(resp.status, resp.statusText, text)}`;
        } else if (!type.startsWith("text/event-stream") || !resp.body) {
          await resp.body?.cancel().catch(() => undefined);
          error = `GET /events answered ${type || "no content type"}, not an event stream: is aios.cellEndpoint an aios-cell?`;
        } else {
          this.opts.onState?.({ kind: "open" });
          attempt = 0;
          backoff = this.minBackoff;
          const body = resp.body as unknown as AsyncIterable<Uint8Array>;
          for await (const msg of parseSse(watch(body, kick))) {
            const event = decodeEvent(msg);
            if (event) {
              this.opts.onEvent(event);
            }
          }
        }
      } catch (e) {
        if (this.stopped) {
          break;
        }
        error = idledOut ? `no data from the cell for ${this.idleTimeout / 1000} s` : describeFetchError(e);
      } finally {
        clearTimeout(idle);
      }
      if (this.stopped) {
        break;
      }
      this.opts.onState?.({ kind: "waiting", attempt: attempt + 1, retryInMs: backoff, error });
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, backoff);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
      backoff = Math.min(backoff * 2, this.maxBackoff);
    }
  }
}

/** Passes the chunks through, calling `seen` on each (the idle watchdog). */
async function* watch(body: AsyncIterable<Uint8Array>, seen: () => void): AsyncGenerator<Uint8Array> {
  for await (const chunk of body) {
    seen();
    yield chunk;
  }
}

const KNOWN = new Set([
  "snapshot",
  "cell_joined",
  "cell_alive",
  "cell_failed",
  "cell_left",
  "level_changed",
  "services_changed",
  "status",
]);

/** The event in a message, or undefined for unknown types (newer cells). */
export function decodeEvent(msg: SseMessage): CellEvent | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(msg.data);
  } catch {
    return undefined;
  }
  if (!parsed || typeof parsed !== "object") {
    return undefined;
  }
  const type = (parsed as { type?: unknown }).type ?? msg.event;
  if (typeof type !== "string" || !KNOWN.has(type)) {
    return undefined;
  }
  return { ...(parsed as object), type } as CellEvent;
}

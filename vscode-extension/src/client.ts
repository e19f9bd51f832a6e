// The cell's HTTP API, with Node's built-in fetch. No `vscode` import: the
// tests drive this module against a real cell.

/** `GET /health` (the fields the extension reads; the cell sends more). */
export interface Health {
  status: "healthy" | "degraded";
  reason?: string | null;
  cell_id: string;
  peer_id: string;
  branch: string;
  consciousness_level: number;
  peers: number;
  peers_alive: number;
  peers_failed: number;
  peers_left: number;
  network_level: number;
  version: string;
  uptime_seconds: number;
  listen_addrs: string[];
  vault_addr: string | null;
}

export type PeerState = "alive" | "failed" | "left";

/** One row of `GET /peers` (and of the `/events` snapshot). */
export interface PeerEntry {
  peer_id: string;
  cell_id: string | null;
  branch: string | null;
  consciousness_level: number | null;
  seq: number;
  addresses: string[];
  found_by: string;
  connected: boolean;
  state: PeerState;
  rtt_ms: number | null;
  last_seen_ms: number;
  agent: string | null;
  relayed?: boolean;
}

export interface Peers {
  cell_id: string;
  peer_id: string;
  count: number;
  peers: PeerEntry[];
}

/** `POST /sync-consciousness`. */
export interface SyncResult {
  status: "synced";
  cell_id: string;
  level: number;
  old_level: number;
  new_level: number;
  network_level: number;
  reached: number;
  seq: number;
}

/** Base of every error this client raises; `message` is for people. */
export class CellError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Nothing answered at the endpoint (refused, unknown host, timeout). */
export class CellUnreachableError extends CellError {
  constructor(
    readonly endpoint: string,
    readonly cause: string,
  ) {
    super(
      `cannot reach the AIOS cell at ${endpoint} (${cause}). Is aios-cell running there? ` +
        `Check the aios.cellEndpoint setting (the cell's HTTP API is on port 8000).`,
    );
  }
}

/** The cell answered with an error status; `detail` is its JSON `error`. */
export class CellHttpError extends CellError {
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(`the AIOS cell answered ${status}: ${detail}`);
  }
}

/** 401: the cell requires an API token for changes, or ours is wrong. */
export class CellAuthError extends CellHttpError {
  constructor(
    detail: string,
    readonly hadToken: boolean,
  ) {
    super(401, detail);
    this.message = hadToken
      ? `the AIOS cell refused the API token (${detail}). Run "AIOS: Set API Token" with the cell's AIOS_API_TOKEN.`
      : `the AIOS cell requires an API token (${detail}). Run "AIOS: Set API Token" with the cell's AIOS_API_TOKEN.`;
  }
}

export interface ClientOptions {
  /** Bearer token for POST routes (cells started with AIOS_API_TOKEN). */
  token?: string | undefined;
  /** Per-request timeout, ms (default 10 s; the cell answers actions in ≤ 5 s). */
  timeoutMs?: number;
}

/** Removes trailing slashes and checks the endpoint is an http(s) URL. */
export function normalizeEndpoint(endpoint: string): string {
  const trimmed = endpoint.trim().replace(/\/+$/, "");
  let url: URL;
  try {
    url = new URL(trimmed);
  } catch {
    throw new CellError(`"${endpoint}" is not a URL; set aios.cellEndpoint to e.g. http://localhost:8000`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new CellError(`"${endpoint}" is not an http(s) URL; set aios.cellEndpoint to e.g. http://localhost:8000`);
  }
  return trimmed;
}

/** Why a fetch failed, in words (Node puts the socket error in `cause`). */
export function describeFetchError(e: unknown): string {
  if (e instanceof Error) {
    if (e.name === "TimeoutError" || e.name === "AbortError") {
      return "no answer in time";
    }
    const cause = (e as { cause?: unknown }).cause;
    if (cause && typeof cause === "object") {
      const c = cause as { code?: string; message?: string };
      if (c.code) {
        return c.code === "ECONNREFUSED" ? "connection refused" : c.code;
      }
      if (c.message) {
        return c.message;
      }
    }
    return e.message;
  }
  return String(e);
}

export class CellClient {
  readonly endpoint: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;

  constructor(endpoint: string, options: ClientOptions = {}) {
    this.endpoint = normalizeEndpoint(endpoint);
    this.token = options.token || undefined;
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  health(): Promise<Health> {
    return this.request<Health>("GET", "/health");
  }

  peers(): Promise<Peers> {
    return this.request<Peers>("GET", "/peers");
  }

  /**
   * Without a level: the seed's call (no body), which re-announces this
   * cell's level to the mesh. With one: sets it. A level must be a finite
   * number ≥ 0; the cell answers 422 otherwise.
   */
  sync(level?: number): Promise<SyncResult> {
    return this.request<SyncResult>("POST", "/sync-consciousness", level === undefined ? undefined : { level });
  }

  private async request<T>(method: "GET" | "POST", path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
    }
    if (this.token && method === "POST") {
      headers.authorization = `Bearer ${this.token}`;
    }
    let resp: Response;
    try {
      resp = await fetch(this.endpoint + path, {
        method,
        headers,
        body: body === undefined ? null : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (e) {
      throw new CellUnreachableError(this.endpoint, describeFetchError(e));
    }
    const text = await resp.text().catch(() => "");
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    if (!resp.ok) {
      const detail =
        json && typeof json === "object" && typeof (json as { error?: unknown }).error === "string"
          ? (json as { error: string }).error
          : text.slice(0, 200) || resp.statusText;
      if (resp.status === 401) {
        throw new CellAuthError(detail, Boolean(this.token));
      }
      throw new CellHttpError(resp.status, detail);
    }
    if (json === undefined) {
      throw new CellHttpError(resp.status, `not JSON: ${text.slice(0, 200)}`);
    }
    return json as T;
  }
}

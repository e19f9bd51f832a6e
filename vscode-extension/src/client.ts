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
  /** This cell's tags (cells from before services: absent). */
  tags?: Record<string, string>;
  /** This cell's services (cells from before services: absent). */
  services?: ServiceEntry[];
}

/** A service a cell announces, as a `/peers` row or `/health` carries it. */
export interface ServiceEntry {
  name: string;
  port: number;
  /** `http`, `https` or `tcp`. */
  protocol: string;
  /** `up`, `down` or `unknown`: the announcing cell's own check. */
  status: string;
}

/** One endpoint of `GET /services`. */
export interface ServiceEndpoint {
  cell_id: string | null;
  peer_id: string;
  address: string;
  port: number;
  protocol: string;
  status: string;
  /** Only for http and https services. */
  url?: string;
}

/** `GET /services`: every service in the mesh by name. */
export interface Services {
  services: Record<string, ServiceEndpoint[]>;
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
  /** Cells from before services send neither. */
  tags?: Record<string, string>;
  services?: ServiceEntry[];
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
    /** The socket-level reason, in words. */
    readonly reason: string,
  ) {
    super(
      `cannot reach the AIOS cell at ${endpoint} (${reason}). Is aios-cell running there? ` +
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

/** Socket errors in words; the hints cover the usual wrong-port mistakes. */
const SOCKET_ERRORS: Record<string, string> = {
  ECONNREFUSED: "connection refused: nothing listens on that port",
  ENOTFOUND: "host name not found",
  EAI_AGAIN: "host name lookup failed (no DNS answer)",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  ETIMEDOUT: "connection timed out",
  UND_ERR_CONNECT_TIMEOUT: "connection timed out",
  // A cell's libp2p port (8001) accepts TCP and then drops an HTTP request.
  ECONNRESET: "connection reset: is that the cell's libp2p port (8001) rather than its HTTP API (8000)?",
  UND_ERR_SOCKET: "the connection closed before an answer",
};

/** Why a fetch failed, in words (Node puts the socket error in `cause`). */
export function describeFetchError(e: unknown): string {
  if (e instanceof Error) {
    if (e.name === "TimeoutError") {
      return "no answer in time";
    }
    if (e.name === "AbortError") {
      return "cancelled";
    }
    const cause = (e as { cause?: unknown }).cause;
    if (cause && typeof cause === "object") {
      const c = cause as { code?: string; message?: string };
      if (c.code) {
        return SOCKET_ERRORS[c.code] ?? (c.message ? `${c.code}: ${c.message}` : c.code);
      }
      if (c.message) {
        return c.message;
      }
    }
    return e.message;
  }
  return String(e);
}

/**
 * The `error` of the cell's JSON error body. Anything else means the endpoint
 * is some other server (the metrics port answers 404 with an empty body), so
 * the text says so.
 */
export function errorDetail(status: number, statusText: string, text: string): string {
  try {
    const json: unknown = JSON.parse(text);
    if (json && typeof json === "object" && typeof (json as { error?: unknown }).error === "string") {
      return (json as { error: string }).error;
    }
  } catch {
    // not JSON: handled below
  }
  const body = text.trim().slice(0, 200);
  return `${body || statusText || `status ${status}`} (not an aios-cell API answer: check that aios.cellEndpoint is the cell's HTTP API, port 8000 by default)`;
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

  /** `GET /services` (a 404 from a cell from before services). */
  services(): Promise<Services> {
    return this.request<Services>("GET", "/services");
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
      const why = describeFetchError(e);
      throw new CellUnreachableError(this.endpoint, why === "no answer in time" ? `no answer within ${this.timeoutMs / 1000} s` : why);
    }
    const text = await resp.text().catch(() => "");
    if (!resp.ok) {
      const detail = errorDetail(resp.status, resp.statusText, text);
      if (resp.status === 401) {
        throw new CellAuthError(detail, Boolean(this.token));
      }
      throw new CellHttpError(resp.status, detail);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (json === undefined || json === null || typeof json !== "object") {
      throw new CellHttpError(
        resp.status,
        `the answer to ${method} ${path} is not a JSON object (${JSON.stringify(text.slice(0, 80))}): is aios.cellEndpoint an aios-cell?`,
      );
    }
    return json as T;
  }
}

// Starts real aios-cell processes for the tests: loopback only, mDNS off
// (the project's network safety rule), each with its own data dir.

import { ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";

/** The cell binary: $AIOS_CELL_BIN, else the repository's debug build. */
export const CELL_BIN = process.env.AIOS_CELL_BIN ?? path.resolve(__dirname, "..", "..", "..", "target", "debug", "aios-cell");

/**
 * Every cell process still running. A test that fails or a runner that is
 * interrupted must not leave cells behind: they are killed when this process
 * exits, however it exits.
 */
const live = new Set<ChildProcess>();
function killAll(): void {
  for (const p of live) {
    p.kill("SIGKILL");
  }
  live.clear();
}
process.once("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(sig, () => {
    killAll();
    process.kill(process.pid, sig);
  });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface CellOptions {
  name: string;
  httpPort?: number;
  dataDir?: string;
  peers?: string;
  token?: string;
  /** The metrics port (default: any free one). */
  metricsPort?: number;
  /** AIOS_SERVICES, e.g. `web=3000/http,api=8443/https` (tcp when left out). */
  services?: string;
  /** AIOS_TAGS, e.g. `role=desktop`. */
  tags?: string;
}

export class TestCell {
  readonly name: string;
  readonly httpPort: number;
  readonly dataDir: string;
  readonly endpoint: string;
  private proc: ChildProcess | undefined;
  private log = "";
  private readonly ownsDir: boolean;

  private constructor(opts: CellOptions, httpPort: number) {
    this.name = opts.name;
    this.httpPort = httpPort;
    this.ownsDir = !opts.dataDir;
    this.dataDir = opts.dataDir ?? mkdtempSync(path.join(tmpdir(), `aios-ext-${opts.name}-`));
    this.endpoint = `http://127.0.0.1:${httpPort}`;
  }

  /**
   * Starts a cell and waits until its /health answers (≤ 20 s). The free
   * port is found by binding and closing it, so another process can take it
   * in between: then it tries another one (3 tries).
   */
  static async start(opts: CellOptions): Promise<TestCell> {
    for (let attempt = 1; ; attempt++) {
      const cell = new TestCell(opts, opts.httpPort ?? (await freePort()));
      try {
        await cell.spawn(opts);
        return cell;
      } catch (e) {
        await cell.dispose();
        if (opts.httpPort !== undefined || attempt >= 3 || !/address already in use|os error 98/i.test(String(e))) {
          throw e;
        }
      }
    }
  }

  private async spawn(opts: CellOptions): Promise<void> {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!k.startsWith("AIOS_") && !k.toLowerCase().endsWith("_proxy")) {
        env[k] = v;
      }
    }
    Object.assign(env, {
      AIOS_CELL_ID: this.name,
      AIOS_MDNS: "false",
      AIOS_QUIC: "false",
      AIOS_P2P_IP: "127.0.0.1",
      AIOS_P2P_PORT: "0",
      AIOS_HTTP_ADDR: `127.0.0.1:${this.httpPort}`,
      AIOS_METRICS_ADDR: `127.0.0.1:${opts.metricsPort ?? 0}`,
      AIOS_DATA_DIR: this.dataDir,
      // No config file of the machine's user.
      XDG_CONFIG_HOME: this.dataDir,
      RUST_LOG: "warn",
    });
    if (opts.peers) {
      env.AIOS_NETWORK_PEERS = opts.peers;
    }
    if (opts.token) {
      env.AIOS_API_TOKEN = opts.token;
    }
    if (opts.services) {
      env.AIOS_SERVICES = opts.services;
    }
    if (opts.tags) {
      env.AIOS_TAGS = opts.tags;
    }
    const proc = spawn(CELL_BIN, ["run"], { env, stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    live.add(proc);
    proc.once("exit", () => live.delete(proc));
    const spawned = new Promise<Error | undefined>((resolve) => {
      proc.once("spawn", () => resolve(undefined));
      proc.once("error", (e) => resolve(e));
    });
    const spawnError = await spawned;
    if (spawnError) {
      throw new Error(`cannot start ${CELL_BIN} (${spawnError.message}): build it with cargo build, or set AIOS_CELL_BIN`);
    }
    const keep = (b: Buffer) => {
      this.log = (this.log + b.toString()).slice(-20_000);
    };
    proc.stdout?.on("data", keep);
    proc.stderr?.on("data", keep);
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (proc.exitCode !== null) {
        throw new Error(`${this.name} exited (${proc.exitCode}): ${this.log}`);
      }
      try {
        const r = await fetch(`${this.endpoint}/health`, { signal: AbortSignal.timeout(1000) });
        if (r.ok) {
          return;
        }
      } catch {
        // not up yet
      }
      await sleep(50);
    }
    throw new Error(`${this.name} did not answer /health within 20 s: ${this.log}`);
  }

  /**
   * Its libp2p TCP address on loopback, from /health. The HTTP API can answer
   * before the listener reports its address: waits for it (≤ 10 s).
   */
  async p2pAddr(): Promise<string> {
    let seen: string[] = [];
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const h = (await (await fetch(`${this.endpoint}/health`)).json()) as { listen_addrs: string[] };
      seen = h.listen_addrs;
      const a = seen.find((x) => x.startsWith("/ip4/127.0.0.1/tcp/"));
      if (a) {
        return a;
      }
      await sleep(50);
    }
    throw new Error(`${this.name} has no loopback TCP address: ${JSON.stringify(seen)}`);
  }

  /** SIGTERM (a clean leave), then waits for the exit (≤ 10 s). */
  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = undefined;
    if (!p || p.exitCode !== null) {
      return;
    }
    const exited = new Promise<void>((resolve) => p.once("exit", () => resolve()));
    p.kill("SIGTERM");
    const timer = setTimeout(() => p.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  }

  /** Starts the same cell again: same HTTP port and data dir. */
  async restart(opts: Omit<CellOptions, "name" | "httpPort" | "dataDir"> = {}): Promise<void> {
    await this.stop();
    await this.spawn({ name: this.name, ...opts });
  }

  async dispose(): Promise<void> {
    await this.stop();
    if (this.ownsDir) {
      rmSync(this.dataDir, { recursive: true, force: true });
    }
  }

  output(): string {
    return this.log;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `check` every 50 ms until it returns a value, or fails after `ms`. */
export async function waitFor<T>(what: string, ms: number, check: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await check();
      if (v !== undefined) {
        return v;
      }
    } catch (e) {
      last = e;
    }
    await sleep(50);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ""}`);
}

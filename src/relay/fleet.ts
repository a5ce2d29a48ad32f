/**
 * A relay as one of a fleet sharing a PostgreSQL store. Each relay registers itself
 * (with the URL the others reach it by, `--advertise`) and takes a lease on every agent
 * that connects to it; a client's relay reaches an agent held elsewhere over one
 * authenticated relay-to-relay WebSocket per pair of relays (peer link), carrying the
 * same frames, credits and offsets as any stream. Changes travel by LISTEN/NOTIFY
 * (a revocation, a lease taken over), with the periodic lease renewal and the hub's
 * sweep as the safety net.
 *
 * Relays prove the fleet secret to each other with an HMAC over their id and the time
 * (`Authorization: Fleet ID.TO.TIME.NONCE.MAC`: for one relay, within FLEET_TOKEN_SKEW_S, once).
 */
import { Buffer } from "node:buffer";
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { dial } from "../protocol/dial.ts";
import type { FleetRouting, Hub, PeerLink } from "./hub.ts";
import { type FleetEvent, type FleetStore, LEASE_TTL_MS } from "./store.ts";

/** How often a relay renews its leases (they live LEASE_TTL_MS past the last renewal). */
export const LEASE_RENEW_MS = 2_000;
/** A relay not seen for this long is not asked for anything (its leases are dead too). */
const RELAY_LIVE_MS = LEASE_TTL_MS;
/** How far apart two relays' clocks may be for a fleet token. */
const FLEET_TOKEN_SKEW_S = 300;
/** The shortest fleet secret accepted. */
export const MIN_FLEET_SECRET = 16;

export function newRelayId(): string {
  return `r${randomBytes(5).toString("hex")}`;
}

function mac(secret: string, id: string, to: string, ts: number, nonce: string): string {
  return createHmac("sha256", secret).update(`tether-fleet-v2|${id}|${to}|${ts}|${nonce}`)
    .digest("hex");
}

/**
 * The Authorization header relay `id` presents to relay `to`: `Fleet ID.TO.TIME.NONCE.MAC`.
 * Bound to the relay it is for, and good once: one seen on the way opens nothing.
 */
export function fleetToken(secret: string, id: string, to: string, now = Date.now()): string {
  const ts = Math.floor(now / 1000);
  const nonce = randomBytes(16).toString("hex");
  return `Fleet ${id}.${to}.${ts}.${nonce}.${mac(secret, id, to, ts, nonce)}`;
}

/** Checks the fleet tokens presented to one relay (`self`), each accepted once. */
export class FleetTokens {
  /** Nonces accepted within the skew window, with when they may be forgotten (s). */
  private readonly seen = new Map<string, number>();

  constructor(private readonly secret: string, readonly self: string) {}

  /** The relay id a token proves, or undefined (forged, stale, for another relay, replayed). */
  check(header: string, now = Date.now()): string | undefined {
    const m =
      /^Fleet ([a-z0-9]{1,32})\.([a-z0-9]{1,32})\.(\d{1,12})\.([0-9a-f]{32})\.([0-9a-f]{64})$/
        .exec(header);
    if (!m) return undefined;
    const [, id, to, tsText, nonce, given] = m;
    const ts = Number(tsText);
    const nowS = now / 1000;
    if (to !== this.self || Math.abs(nowS - ts) > FLEET_TOKEN_SKEW_S) return undefined;
    const want = Buffer.from(mac(this.secret, id, to, ts, nonce), "hex");
    if (!timingSafeEqual(want, Buffer.from(given, "hex"))) return undefined;
    for (const [n, until] of this.seen) if (until < nowS) this.seen.delete(n);
    if (this.seen.has(nonce)) return undefined;
    this.seen.set(nonce, ts + FLEET_TOKEN_SKEW_S);
    return id;
  }
}

export interface FleetOptions {
  relayId: string;
  /** How the other relays reach this one. */
  url: string;
  secret: string;
  /** A private CA for the others' wss:// URLs (--ca-file, TETHER_CA_FILE). */
  caFile?: string;
  store: FleetStore;
  hub: Hub;
  log: (line: string) => void;
}

export class Fleet implements FleetRouting {
  readonly relayId: string;
  private readonly links = new Map<string, PeerLink>();
  private readonly dialing = new Map<string, Promise<PeerLink>>();
  private timer?: ReturnType<typeof setInterval>;
  private renewing = false;
  private stopped = false;

  constructor(private readonly opts: FleetOptions) {
    this.relayId = opts.relayId;
  }

  /** Registers this relay and starts listening; the hub routes through it from now on. */
  async start(): Promise<void> {
    const { store, hub } = this.opts;
    await store.registerRelay(this.relayId, this.opts.url);
    await store.listen((e) => this.onEvent(e), () => {
      // Events may have been missed while the listening connection was down.
      hub.sweep().catch(() => {});
      this.renew().catch(() => {});
    });
    hub.fleet = this;
    // Agents that connected while we were joining get their leases at once.
    this.renew().catch(() => {});
    this.timer = setInterval(() => {
      this.renew().catch((e) => this.opts.log(`cannot renew leases: ${(e as Error).message}`));
    }, LEASE_RENEW_MS);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    for (const l of this.links.values()) l.conn.close(1001, "relay shutting down");
    this.links.clear();
    // The others learn at once that our agents are to be found elsewhere.
    await this.opts.store.removeRelay(this.relayId).catch(() => {});
  }

  claim(machine: string): Promise<number> {
    return this.opts.store.claimLease(machine, this.relayId);
  }

  release(machine: string, epoch: number): void {
    if (this.stopped) return;
    this.opts.store.releaseLease(machine, this.relayId, epoch).catch(() => {
      /* it expires by itself */
    });
  }

  /** Renews our leases in one statement; agents whose lease another relay took are let go. */
  async renew(): Promise<void> {
    if (this.renewing || this.stopped) return;
    this.renewing = true;
    try {
      const held = new Map<string, number>();
      for (const a of this.opts.hub.agents.values()) {
        if (a.epoch !== undefined) held.set(a.machineId, a.epoch);
      }
      // An agent without a lease said hello while this relay was joining the fleet, or
      // while the database was away: take its lease now.
      for (const a of [...this.opts.hub.agents.values()].filter((a) => a.epoch === undefined)) {
        a.epoch = await this.claim(a.machineId);
      }
      const lost = await this.opts.store.renewLeases(this.relayId, this.opts.url, held);
      for (const m of lost) {
        const link = this.opts.hub.agents.get(m);
        // Only if it is still the connection whose lease was renewed (not a newer one).
        if (link && link.epoch === held.get(m)) {
          this.opts.hub.evict(m, "the machine is held by another relay now");
        }
      }
    } finally {
      this.renewing = false;
    }
  }

  private onEvent(e: FleetEvent): void {
    const { hub } = this.opts;
    switch (e.kind) {
      case "revoke":
        hub.sweep().catch(() => {});
        return;
      case "lease": {
        if (e.relay === this.relayId) return;
        const link = hub.agents.get(e.machine);
        if (link && (link.epoch ?? 0) < e.epoch) {
          hub.evict(e.machine, "the machine connected to another relay");
        }
        return;
      }
      case "machine":
        return;
    }
  }

  async upstream(machine: string): Promise<PeerLink | undefined> {
    const h = await this.opts.store.holder(machine);
    if (!h || h.relay === this.relayId) return undefined;
    return await this.peer(h.relay, h.url);
  }

  async peers(): Promise<PeerLink[]> {
    const relays = (await this.opts.store.liveRelays(RELAY_LIVE_MS))
      .filter((r) => r.id !== this.relayId);
    const links = await Promise.all(relays.map((r) =>
      this.peer(r.id, r.url).catch((e) => {
        this.opts.log(`cannot reach relay ${r.id} at ${r.url}: ${(e as Error).message}`);
        return undefined;
      })
    ));
    return links.filter((l): l is PeerLink => l !== undefined);
  }

  /** The link to relay `id`, dialed once and shared by every stream to it. */
  private peer(id: string, url: string): Promise<PeerLink> {
    const open = this.links.get(id);
    if (open?.conn.isOpen) return Promise.resolve(open);
    let pending = this.dialing.get(id);
    if (!pending) {
      pending = this.dialPeer(id, url).finally(() => this.dialing.delete(id));
      this.dialing.set(id, pending);
    }
    return pending;
  }

  private async dialPeer(id: string, url: string): Promise<PeerLink> {
    const { hub, log, secret } = this.opts;
    const { conn } = await dial({
      relay: url,
      key: "",
      authorization: fleetToken(secret, this.relayId, id),
      role: "relay",
      // Relays reach each other on the addresses they advertise; what crosses is up to
      // the operator's --advertise (wss:// across networks).
      insecure: true,
      caFile: this.opts.caFile,
      label: `relay ${id}`,
    });
    const link: PeerLink = {
      conn,
      relayId: id,
      routes: new Map(),
      nextSid: 1,
      pending: new Map(),
      nextReq: 1,
    };
    conn.start({
      onControl: (msg) => hub.onUpstreamControl(link, msg),
      onFrame: (f, raw) => hub.onUpstreamFrame(link, f, raw),
      onClose: (reason) => {
        if (this.links.get(id) === link) this.links.delete(id);
        hub.failUpstream(link, `the relay holding it (${id}) is gone: ${reason}`);
      },
    });
    if (this.stopped) {
      conn.close(1001, "relay shutting down");
      throw new Error("relay shutting down");
    }
    this.links.set(id, link);
    log(`linked to relay ${id} at ${url}`);
    return link;
  }
}

/**
 * `GET /metrics` in the Prometheus text format (npm `prom-client`). What the hub counts on
 * its hot path are plain numbers (Hub.stats); they are read when scraped. The store is
 * timed by wrapping it (timedStore), so every call's latency is seen whatever the store.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Hub } from "./hub.ts";

export class RelayMetrics {
  readonly registry = new Registry();
  readonly authFailures: Counter<"code">;
  readonly storeSeconds: Histogram<"op" | "outcome">;

  constructor() {
    const registers = [this.registry];
    this.authFailures = new Counter({
      name: "tether_auth_failures_total",
      help: "refused connections, by error code",
      labelNames: ["code"],
      registers,
    });
    this.storeSeconds = new Histogram({
      name: "tether_store_seconds",
      help: "time the store took, by operation and outcome (ok, error)",
      labelNames: ["op", "outcome"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
  }

  /** Reports what `hub` holds and has relayed. */
  watch(hub: Hub): void {
    const registers = [this.registry];
    const gauge = (name: string, help: string, value: () => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(value());
        },
      });
    // Totals kept by the hub; a counter that is set at scrape time.
    const total = (name: string, help: string, label: string, values: () => [string, number][]) =>
      new Counter({
        name,
        help,
        labelNames: [label],
        registers,
        collect() {
          this.reset();
          for (const [l, v] of values()) this.inc({ [label]: l }, v);
        },
      });
    gauge("tether_agents_connected", "agents connected to this relay", () => hub.agents.size);
    gauge(
      "tether_clients_connected",
      "clients connected to this relay (not counting other relays of the fleet)",
      () => [...hub.clients].filter((c) => !c.peer).length,
    );
    new Gauge({
      name: "tether_streams_open",
      help:
        "streams this relay routes for its own clients, by kind (exec, pty, tcp, sessions, kill)",
      labelNames: ["kind"],
      registers,
      collect() {
        this.reset();
        const n = { exec: 0, pty: 0, tcp: 0, sessions: 0, kill: 0 };
        for (const c of hub.clients) {
          if (c.peer) continue;
          for (const r of c.routes.values()) n[r.kind]++;
        }
        for (const [kind, v] of Object.entries(n)) this.set({ kind }, v);
      },
    });
    new Gauge({
      name: "tether_relay_streams",
      help: "streams crossing a relay-to-relay link: out (to the relay holding the agent), " +
        "in (from the client's relay)",
      labelNames: ["direction"],
      registers,
      collect() {
        let out = 0, inbound = 0;
        for (const c of hub.clients) {
          for (const r of c.routes.values()) {
            if (c.peer) inbound++;
            else if (!("machineId" in r.up)) out++;
          }
        }
        this.set({ direction: "out" }, out);
        this.set({ direction: "in" }, inbound);
      },
    });
    total("tether_bytes_relayed_total", "stream bytes relayed", "direction", () => [
      ["to_agent", hub.stats.bytesToAgent],
      ["to_client", hub.stats.bytesToClient],
    ]);
    total("tether_frames_relayed_total", "binary frames relayed", "direction", () => [
      ["to_agent", hub.stats.framesToAgent],
      ["to_client", hub.stats.framesToClient],
    ]);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/**
 * The store, with every method that returns a promise timed into `seconds` (its fleet
 * part, too). Methods run on the store itself, so its own inner calls are not counted.
 */
export function timedStore<T extends object>(store: T, seconds: Histogram<"op" | "outcome">): T {
  return new Proxy(store, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (prop === "fleet" && value && typeof value === "object") {
        return value === target ? receiver : timedStore(value, seconds);
      }
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const out = value.apply(target, args);
        if (!(out instanceof Promise)) return out;
        const end = seconds.startTimer({ op: String(prop) });
        return out.then(
          (v) => (end({ outcome: "ok" }), v),
          (e) => {
            end({ outcome: "error" });
            throw e;
          },
        );
      };
    },
  });
}

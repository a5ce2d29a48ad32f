/**
 * Keeps short-lived stream buffers from piling up. Frame buffers live
 * outside V8's heap, so V8 feels little pressure and collects them late:
 * streaming 2 GiB at 10 MiB/s once grew a relay and an agent by ~60 MiB
 * each of dead buffers. The bulk paths no longer allocate per frame (see
 * protocol/ws_socket.ts); the places that still do (a received frame an
 * agent or client keeps, an encoded DATA frame) report their bytes here, and
 * every GC_EVERY_BYTES of them a collection is run — but never more often
 * than keeps its cost under ~2% of the time (V8's `gc()` here is a full
 * collection, a few ms). `node:v8` exposes the collector without a
 * command-line flag.
 */
import v8 from "node:v8";
import vm from "node:vm";

export const GC_EVERY_BYTES = 4 * 1024 * 1024;
/** Time between collections: at least this, and at least 50× the last one's duration. */
const MIN_INTERVAL_MS = 250;

type GcFn = () => void;
let gc: GcFn | null | undefined;
let moved = 0;
let nextAllowed = 0;

function collector(): GcFn | null {
  if (gc === undefined) {
    try {
      v8.setFlagsFromString("--expose-gc");
      gc = vm.runInNewContext("gc") as GcFn;
    } catch {
      gc = null;
    }
  }
  return gc;
}

/** Counts bytes just allocated for one frame, soon garbage; collects now and then. */
export function noteStreamBytes(n: number): void {
  moved += n;
  if (moved < GC_EVERY_BYTES) return;
  const now = performance.now();
  if (now < nextAllowed) return;
  moved = 0;
  const run = collector();
  if (!run) return;
  run();
  const took = performance.now() - now;
  nextAllowed = now + Math.max(MIN_INTERVAL_MS, 50 * took);
}

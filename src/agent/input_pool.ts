/**
 * Buffers for what a client sends a command (stdin, keystrokes, a forwarded socket's bytes)
 * while it waits to be written. The agent takes each frame from its link as a view of the
 * link's read buffer, valid only while the frame is handled (`borrowBinary`), and copies
 * what it keeps into these, given back once written: a 64 KiB pipe read's worth each. A new
 * buffer per frame cost the agent ~30 µs a frame in allocation and page faults, and a
 * garbage collection every few megabytes (`profile.ts stdin`, December 3).
 *
 * At most 16 free buffers (1 MiB, one stdin window's worth) are kept.
 */
import { BufferPool } from "../common/bytes.ts";

export const inputPool = new BufferPool(64 * 1024, 16);

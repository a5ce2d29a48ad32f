/**
 * `tether ci inject WORKFLOW --after-step N [--job KEY]` — the pure part: take the text of a
 * GitHub Actions workflow and return it with one hold step (`tether ci hold`) added.
 * No file or terminal I/O happens here; the CLI reads the file, calls `injectHoldStep`,
 * and writes `output` to stdout or `-o OUT`. Every failure is a `TetherError("usage")`
 * thrown before anything is produced, so "error" always means "nothing written".
 *
 * Decisions (the README and `--help` repeat them):
 *
 * - **N is the number of steps to run before the hold.** `--after-step N` is 1-based,
 *   so N = 3 holds after the third step and the new step becomes step 4 (index 3).
 *   N = 0 is allowed and means "before the first step" (inspect a fresh runner);
 *   N = number of steps means "after the last step". Anything else, a negative or a
 *   non-integer, is a usage error that states the valid range.
 * - **Condition `if: ${{ !cancelled() }}`.** A step without `if:` is skipped once an earlier
 *   step has failed, which defeats the main use (hold after a failing step). `always()`
 *   would also run when the run is cancelled and block the cancel until the runner is
 *   killed; `!cancelled()` runs after success and after failure but not after a cancel.
 *   `failure()` would miss "stop here and look around" on a green run. The option
 *   `condition` overrides it (`"failure()"`, a full `${{ … }}`, or `null` for no `if:`).
 * - **Idempotence: an error.** If the job already has a step that runs `tether ci hold`,
 *   injecting again fails (naming that step) rather than adding a second hold or silently
 *   ignoring the requested position. Other jobs are not looked at: holding two jobs is
 *   legitimate.
 * - **Layout.** The `yaml` Document API parses and locates the steps (with the CST for
 *   exact offsets), and the step is spliced into the original text as whole lines, so
 *   everything else stays byte-identical (comments, blank lines, quoting, key order,
 *   CRLF). The step copies the indentation of its siblings: the column of their `-`
 *   (both `steps:\n  - …` and `steps:\n- …`), the gap after the `-`, and the nested
 *   indentation unit (from a nested mapping in the steps, else from the job). If the
 *   steps use blank lines between them, the new step gets one too. The spliced text is
 *   re-parsed and compared with the expected data; only if that fails (or `steps:` is a
 *   flow sequence `[…]`) does it fall back to re-serializing the Document, reported
 *   as `layoutPreserved: false`.
 * - **One step.** `tether` is assumed on PATH (the README explains how to get it); the
 *   relay URL and agent key come from the repository secrets `TETHER_RELAY` and
 *   `TETHER_AGENT_KEY`. A comment line above the step says to remove it when done.
 */
import { isDeepStrictEqual } from "node:util";
import {
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  type Node,
  type Pair,
  parse,
  parseDocument,
  type YAMLMap,
  type YAMLSeq,
} from "yaml";
import { TetherError } from "../common/errors.ts";
import { DEFAULT_HOLD_CONDITION } from "./contract.ts";

export { DEFAULT_HOLD_CONDITION };

export const HOLD_STEP_NAME = "tether: hold for debugging";
export const HOLD_STEP_RUN = "tether ci hold";
export const HOLD_STEP_COMMENT = "added by tether ci inject; remove when done debugging";
/** The secrets the hold step passes to `tether ci hold`. */
export const HOLD_STEP_ENV: Readonly<Record<string, string>> = {
  TETHER_RELAY: "${{ secrets.TETHER_RELAY }}",
  TETHER_AGENT_KEY: "${{ secrets.TETHER_AGENT_KEY }}",
};

/** Recognizes an existing hold step by its `run:` text. */
const HOLD_RUN_RE = /(^|[\s;&|(/])tether\s+ci\s+hold\b/m;

export interface InjectOptions {
  /** Steps to run before the hold (1-based "after step N"); 0 = before the first step. */
  afterStep: number;
  /** Job key; optional when the workflow has exactly one job. */
  job?: string;
  /** Shown in messages (e.g. `.github/workflows/ci.yml`). */
  fileName?: string;
  /**
   * The step's `if:`. A bare expression (`failure()`) is wrapped in `${{ }}`; `null` or
   * `""` leaves `if:` out. Default: {@link DEFAULT_HOLD_CONDITION}.
   */
  condition?: string | null;
}

export interface InjectResult {
  /** The whole new workflow text. */
  output: string;
  /** The job the step went into. */
  job: string;
  /** 0-based index of the new step in the job's `steps` (equals `afterStep`). */
  stepIndex: number;
  /** Number of steps in the job after the insertion. */
  stepCount: number;
  /** Where the inserted text starts in `output` (character offset). */
  offset: number;
  /**
   * 1-based line of the new step's `- name:` in `output` (for "added at FILE:LINE");
   * when the layout was not preserved, the first line that differs from the input.
   */
  line: number;
  /**
   * The inserted text (whole lines, starting at `offset`): `output` minus it is exactly the
   * input. Empty when the layout was not preserved.
   */
  inserted: string;
  /** False when the file had to be re-serialized (flow-style `steps: [...]`). */
  layoutPreserved: boolean;
}

/**
 * Parse the text of `--after-step`. Accepts only a plain non-negative decimal integer;
 * the upper bound is checked by `injectHoldStep`, which knows the number of steps.
 */
export function parseAfterStep(raw: string): number {
  const s = raw.trim();
  if (!/^\d+$/.test(s)) {
    throw new TetherError(
      "usage",
      `--after-step must be a whole number of steps (0 or more), got ${JSON.stringify(raw)}`,
      {
        hint:
          "N counts steps from 1: --after-step 2 holds after the second step; 0 before the first",
      },
    );
  }
  return Number(s);
}

/** The step that gets inserted, as plain data (what a YAML parser reads back). */
export function holdStep(condition?: string | null): Record<string, unknown> {
  const step: Record<string, unknown> = { name: HOLD_STEP_NAME };
  const cond = normalizeCondition(condition);
  if (cond !== null) step.if = cond;
  step.run = HOLD_STEP_RUN;
  step.env = { ...HOLD_STEP_ENV };
  return step;
}

export function injectHoldStep(source: string, opts: InjectOptions): InjectResult {
  const file = opts.fileName ?? "the workflow";
  const n = opts.afterStep;
  if (typeof n !== "number" || !Number.isInteger(n) || n < 0) {
    throw new TetherError(
      "usage",
      `--after-step must be a whole number of steps (0 or more), got ${String(n)}`,
      {
        hint:
          "N counts steps from 1: --after-step 2 holds after the second step; 0 before the first",
      },
    );
  }

  const doc = parseWorkflow(source, file);
  const jobs = doc.get("jobs", true) as YAMLMap;
  const { key: jobKey, node: jobNode } = pickJob(jobs, opts.job, file);
  const seq = jobSteps(jobKey, jobNode, file);

  const existing = seq.items.findIndex(isHoldStep);
  if (existing >= 0) {
    throw new TetherError(
      "usage",
      `job "${jobKey}" in ${file} already has a hold step (step ${existing + 1} runs ` +
        `\`${HOLD_STEP_RUN}\`); nothing injected`,
      { hint: "remove or move that step by hand, then run `tether ci inject` again" },
    );
  }

  const count = seq.items.length;
  if (n > count) {
    throw new TetherError(
      "usage",
      `--after-step ${n} is out of range: job "${jobKey}" has ${plural(count, "step")}`,
      {
        hint: `use 0 to ${count} (0 = before the first step, ${count} = after the last)`,
      },
    );
  }

  const step = holdStep(opts.condition);
  const expected = expectedData(doc, jobKey, n, step);

  const spliced = spliceBlock(source, doc, jobNode, seq, n, step);
  if (spliced && sameData(spliced.output, expected)) {
    return {
      ...spliced,
      job: jobKey,
      stepIndex: n,
      stepCount: count + 1,
      line: lineOf(spliced.output, spliced.stepOffset),
      layoutPreserved: true,
    };
  }

  // Fallback: edit the Document and re-serialize (comments kept, layout may change).
  const output = reserialize(doc, seq, n, step);
  if (!sameData(output, expected)) {
    throw new TetherError("internal", `could not insert the hold step into ${file} safely`, {
      hint: "add the step by hand; see `tether ci inject --help` for its text",
    });
  }
  const offset = commonPrefix(source, output);
  return {
    output,
    job: jobKey,
    stepIndex: n,
    stepCount: count + 1,
    offset,
    line: lineOf(output, offset),
    inserted: "",
    layoutPreserved: false,
  };
}

// ---------------------------------------------------------------- validation

function parseWorkflow(source: string, file: string): Document.Parsed {
  const doc = parseDocument(source, { keepSourceTokens: true, prettyErrors: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    if (e.code === "MULTIPLE_DOCS") {
      throw notWorkflow(file, "it holds several YAML documents (---); a workflow is one");
    }
    const where = e.linePos ? ` at line ${e.linePos[0].line}, column ${e.linePos[0].col}` : "";
    const what = e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
    throw new TetherError("usage", `${file} is not valid YAML${where}: ${what}`, {
      hint: "fix the YAML (GitHub would reject it too), then run `tether ci inject` again",
    });
  }
  const root = doc.contents;
  if (root === null || (isScalar(root) && root.value === null)) {
    throw notWorkflow(file, "it is empty");
  }
  if (!isMap(root)) throw notWorkflow(file, "its top level is not a mapping");
  const keys = root.items.map((p) => keyText(p));
  // `on` is a string in YAML 1.2 (the default); a `%YAML 1.1` file reads it as `true`.
  const hasOn = root.items.some((p) =>
    keyText(p) === "on" || (isScalar(p.key) && p.key.value === true)
  );
  const jobs = root.get("jobs", true);
  if (jobs === undefined) {
    const extra = keys.includes("runs")
      ? " (it looks like an action's action.yml: add the step to its `runs.steps` by hand)"
      : keys.includes("services")
      ? " (it looks like a docker-compose file)"
      : "";
    throw notWorkflow(file, `it has no \`jobs:\` mapping${extra}`);
  }
  if (!isMap(jobs)) throw notWorkflow(file, "its `jobs:` is not a mapping of job keys");
  if (!hasOn) throw notWorkflow(file, "it has no `on:` trigger");
  if (jobs.items.length === 0) throw notWorkflow(file, "its `jobs:` mapping is empty");
  return doc;
}

function notWorkflow(file: string, why: string): TetherError {
  return new TetherError("usage", `${file} is not a GitHub Actions workflow: ${why}`, {
    hint: "pass a workflow file, e.g. .github/workflows/ci.yml (it needs `on:` and `jobs:`)",
  });
}

function pickJob(
  jobs: YAMLMap,
  wanted: string | undefined,
  file: string,
): { key: string; node: unknown } {
  const all = jobs.items.map((p) => ({ key: keyText(p), node: p.value }));
  const listing = all.map(describeJob).join(", ");
  if (wanted === undefined || wanted === "") {
    if (all.length === 1) return all[0];
    throw new TetherError(
      "usage",
      `${file} has ${all.length} jobs; say which one with --job: ${
        all.map((j) => j.key).join(", ")
      }`,
      { hint: `jobs: ${listing}` },
    );
  }
  const hit = all.find((j) => j.key === wanted);
  if (hit) return hit;
  const near = all.find((j) => j.key.toLowerCase() === wanted.toLowerCase());
  throw new TetherError(
    "usage",
    `no job "${wanted}" in ${file}; its jobs are: ${all.map((j) => j.key).join(", ")}`,
    { hint: (near ? `did you mean --job ${near.key}? ` : "") + `jobs: ${listing}` },
  );
}

function describeJob(j: { key: string; node: unknown }): string {
  const n = j.node;
  if (isMap(n)) {
    const steps = n.get("steps", true);
    if (isSeq(steps)) return `${j.key} (${plural(steps.items.length, "step")})`;
    if (n.has("uses")) return `${j.key} (reusable workflow, no steps)`;
  }
  return `${j.key} (no steps)`;
}

function jobSteps(jobKey: string, job: unknown, file: string): YAMLSeq {
  if (!isMap(job)) {
    throw new TetherError("usage", `job "${jobKey}" in ${file} is not a mapping`, {
      hint: "pick a job that has `runs-on:` and `steps:`",
    });
  }
  const steps = job.get("steps", true);
  if (steps === undefined || (isScalar(steps) && steps.value === null)) {
    const uses = job.get("uses");
    if (uses !== undefined) {
      throw new TetherError(
        "usage",
        `job "${jobKey}" in ${file} calls a reusable workflow (uses: ${String(uses)}) ` +
          "and has no steps of its own",
        { hint: "inject into a job of the called workflow instead, or into another job here" },
      );
    }
    throw new TetherError("usage", `job "${jobKey}" in ${file} has no steps`, {
      hint: "pick a job with a `steps:` list",
    });
  }
  if (isAlias(steps)) {
    throw new TetherError("usage", `the steps of job "${jobKey}" in ${file} are a YAML alias`, {
      hint: "inject where the anchored steps are defined, or add the step by hand",
    });
  }
  if (!isSeq(steps)) {
    throw new TetherError("usage", `\`steps:\` of job "${jobKey}" in ${file} is not a list`, {
      hint: "a job's steps are a YAML sequence (`- name: …` items)",
    });
  }
  return steps;
}

function isHoldStep(item: unknown): boolean {
  if (!isMap(item)) return false;
  const run = item.get("run");
  return typeof run === "string" && HOLD_RUN_RE.test(run);
}

// ---------------------------------------------------------------- text splice

interface Splice {
  output: string;
  offset: number;
  inserted: string;
  /** Offset of the step's `-` line (after the comment line above it). */
  stepOffset: number;
}

/** Insert the step as whole lines into a block sequence; null when not possible. */
function spliceBlock(
  src: string,
  doc: Document.Parsed,
  job: unknown,
  seq: YAMLSeq,
  n: number,
  step: Record<string, unknown>,
): Splice | null {
  const tok = seq.srcToken;
  if (!tok || tok.type !== "block-seq" || tok.items.length !== seq.items.length) return null;
  const dashes = tok.items.map((it) => it.start.find((t) => t.type === "seq-item-ind"));
  if (dashes.some((d) => d === undefined)) return null;
  const dashOffsets = dashes.map((d) => d!.offset);
  const dashCol = col(src, dashOffsets[0]);
  const eol = src.includes("\r\n") ? "\r\n" : "\n";

  // Model sibling: the step just before the insertion point (or the first one).
  const ref = n > 0 ? n - 1 : 0;
  const refNode = seq.items[ref] as Node | null;
  let gap = 2; // columns from the `-` to the step's keys
  if (refNode?.range) {
    const c = col(src, refNode.range[0]) - dashCol;
    if (c >= 2) gap = c;
  }
  const unit = indentUnit(src, doc, job, seq);

  // Where each step's own lines end (including comment lines indented inside it).
  const ends = seq.items.map((item, i) =>
    itemEnd(src, item as Node | null, dashOffsets[i], dashCol)
  );

  // Blank lines between steps? Then the new step gets one too.
  let blankGaps = 0;
  for (let i = 0; i + 1 < seq.items.length; i++) {
    const between = src.slice(ends[i], lineStart(src, dashOffsets[i + 1]));
    if (between.split("\n").some((l, k, a) => k < a.length - 1 && l.trim() === "")) blankGaps++;
  }
  const blankStyle = seq.items.length > 1 && blankGaps * 2 >= seq.items.length - 1;

  const body = renderStep(step, dashCol, gap, unit).join(eol) + eol;
  let offset: number;
  let inserted: string;
  if (n === 0) {
    offset = firstItemStart(src, lineStart(src, dashOffsets[0]));
    inserted = blankStyle ? body + eol : body;
  } else {
    offset = ends[n - 1];
    const needNl = offset > 0 && src[offset - 1] !== "\n";
    inserted = (needNl ? eol : "") + (blankStyle ? eol : "") + body;
  }
  const stepOffset = offset + inserted.indexOf(body) + body.indexOf(eol) + eol.length;
  return {
    output: src.slice(0, offset) + inserted + src.slice(offset),
    offset,
    inserted,
    stepOffset,
  };
}

/**
 * Offset just past the last line of a step: the line holding the end of its value, plus
 * following comment lines indented deeper than the `-` (they belong to that step).
 * Blank lines and comments at the `-` column stay with the next step.
 */
function itemEnd(src: string, item: Node | null, dash: number, dashCol: number): number {
  let k = item?.range ? item.range[1] : dash + 1;
  while (k > dash + 1 && /\s/.test(src[k - 1])) k--;
  let pos = nextLine(src, k - 1);
  while (pos < src.length) {
    const nl = nextLine(src, pos);
    const line = src.slice(pos, nl);
    const t = line.trimStart();
    if (!t.startsWith("#") || line.length - t.length <= dashCol) break;
    pos = nl;
  }
  return pos;
}

/** The start of the comment lines directly above the first step (they describe it). */
function firstItemStart(src: string, dashLine: number): number {
  let pos = dashLine;
  while (pos > 0) {
    const prev = lineStart(src, pos - 1);
    if (!src.slice(prev, pos).trim().startsWith("#")) break;
    pos = prev;
  }
  return pos;
}

/** Indentation step for the step's nested `env:` keys, copied from the file. */
function indentUnit(src: string, doc: Document.Parsed, job: unknown, seq: YAMLSeq): number {
  const nested = (map: unknown): number | null => {
    if (!isMap(map)) return null;
    for (const p of map.items) {
      if (isMap(p.value) && p.value.srcToken?.type === "block-map" && p.value.items.length > 0) {
        const child = p.value.items[0].key as Node | null;
        const key = p.key as Node | null;
        if (child?.range && key?.range) {
          const d = col(src, child.range[0]) - col(src, key.range[0]);
          if (d > 0) return d;
        }
      }
    }
    return null;
  };
  for (const item of seq.items) {
    const d = nested(item);
    if (d) return d;
  }
  const d = nested(job);
  if (d) return d;
  const root = doc.contents;
  if (isMap(root)) {
    const jobsPair = root.items.find((p) => keyText(p) === "jobs");
    const jobs = jobsPair?.value;
    const jobsKey = jobsPair?.key as Node | undefined;
    if (isMap(jobs) && jobs.items.length > 0 && jobsKey?.range) {
      const k = jobs.items[0].key as Node | null;
      if (k?.range) {
        const d2 = col(src, k.range[0]) - col(src, jobsKey.range[0]);
        if (d2 > 0) return d2;
      }
    }
  }
  return 2;
}

function renderStep(
  step: Record<string, unknown>,
  dashCol: number,
  gap: number,
  unit: number,
): string[] {
  const pad = (k: number) => " ".repeat(k);
  const lines = [`${pad(dashCol)}# ${HOLD_STEP_COMMENT}`];
  let first = true;
  for (const [k, v] of Object.entries(step)) {
    const lead = first ? `${pad(dashCol)}-${pad(gap - 1)}` : pad(dashCol + gap);
    first = false;
    if (v !== null && typeof v === "object") {
      lines.push(`${lead}${k}:`);
      for (const [k2, v2] of Object.entries(v as Record<string, string>)) {
        lines.push(`${pad(dashCol + gap + unit)}${k2}: ${scalar(v2)}`);
      }
    } else {
      lines.push(`${lead}${k}: ${scalar(String(v))}`);
    }
  }
  return lines;
}

/** A plain scalar when it reads back as the same string, else a double-quoted one. */
function scalar(s: string): string {
  if (s !== "" && s === s.trim() && !/[\n\r\t]/.test(s)) {
    try {
      const back = parse(`k: ${s}`) as Record<string, unknown> | null;
      if (back && back.k === s) return s;
    } catch {
      // not plain-safe
    }
  }
  return JSON.stringify(s);
}

function normalizeCondition(c: string | null | undefined): string | null {
  if (c === undefined) return DEFAULT_HOLD_CONDITION;
  if (c === null) return null;
  const t = c.trim();
  if (t === "") return null;
  return /^\$\{\{[\s\S]*\}\}$/.test(t) ? t : `\${{ ${t} }}`;
}

// ---------------------------------------------------------------- fallback + checks

function reserialize(
  doc: Document.Parsed,
  seq: YAMLSeq,
  n: number,
  step: Record<string, unknown>,
): string {
  const node = doc.createNode(step);
  seq.items.splice(n, 0, node);
  try {
    return doc.toString({ lineWidth: 0 });
  } finally {
    seq.items.splice(n, 1);
  }
}

function expectedData(
  doc: Document.Parsed,
  jobKey: string,
  n: number,
  step: Record<string, unknown>,
): unknown {
  const data = doc.toJS({ maxAliasCount: -1 }) as Record<string, unknown>;
  const jobs = data.jobs as Record<string, Record<string, unknown>>;
  (jobs[jobKey].steps as unknown[]).splice(n, 0, step);
  return data;
}

function sameData(text: string, expected: unknown): boolean {
  const doc = parseDocument(text);
  if (doc.errors.length > 0) return false;
  return isDeepStrictEqual(doc.toJS({ maxAliasCount: -1 }), expected);
}

// ---------------------------------------------------------------- small helpers

function keyText(p: Pair): string {
  const k = p.key;
  if (isScalar(k)) return String(k.value);
  return String(k);
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function lineStart(src: string, offset: number): number {
  return src.lastIndexOf("\n", offset - 1) + 1;
}

/** Offset of the start of the line after the one containing `offset`. */
function nextLine(src: string, offset: number): number {
  const nl = src.indexOf("\n", Math.max(offset, 0));
  return nl < 0 ? src.length : nl + 1;
}

function col(src: string, offset: number): number {
  return offset - lineStart(src, offset);
}

function lineOf(src: string, offset: number): number {
  let line = 1;
  for (let i = src.indexOf("\n"); i >= 0 && i < offset; i = src.indexOf("\n", i + 1)) line++;
  return line;
}

function commonPrefix(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return lineStart(b, i);
}

import assert from "node:assert/strict";
import { parse } from "yaml";
import {
  DEFAULT_HOLD_CONDITION,
  HOLD_STEP_NAME,
  HOLD_STEP_RUN,
  injectHoldStep,
  type InjectOptions,
  type InjectResult,
  parseAfterStep,
} from "../../src/ci/inject.ts";
import { TetherError } from "../../src/common/errors.ts";

const FIXTURES = new URL("../fixtures/workflows/", import.meta.url);
const fixture = (name: string) => Deno.readTextFileSync(new URL(name, FIXTURES));

const SINGLE = fixture("single_job.yml");
const MULTI = fixture("multi_job.yml");
const REUSABLE = fixture("reusable.yml");
const COMPOSE = fixture("docker-compose.yml");
const INVALID = fixture("invalid.yml");
const HELD = fixture("already_held.yml");

type Step = Record<string, unknown>;
type Workflow = { jobs: Record<string, { steps: Step[] }> };

const EXPECTED_ENV = {
  TETHER_RELAY: "${{ secrets.TETHER_RELAY }}",
  TETHER_AGENT_KEY: "${{ secrets.TETHER_AGENT_KEY }}",
};

function steps(text: string, job: string): Step[] {
  return (parse(text) as Workflow).jobs[job].steps;
}

/** The output with the inserted lines cut out must be the input, byte for byte. */
function assertOnlyInserted(source: string, r: InjectResult) {
  assert.equal(r.layoutPreserved, true);
  assert.equal(r.output.slice(r.offset, r.offset + r.inserted.length), r.inserted);
  assert.equal(r.output.slice(0, r.offset) + r.output.slice(r.offset + r.inserted.length), source);
  assert.equal(r.output.length, source.length + r.inserted.length);
}

/** Steps of the output are the original ones with the hold step at index n. */
function assertStepAt(source: string, r: InjectResult, n: number) {
  const before = steps(source, r.job);
  const after = steps(r.output, r.job);
  assert.equal(r.stepIndex, n);
  assert.equal(after.length, before.length + 1);
  assert.equal(r.stepCount, after.length);
  assert.deepEqual(after.slice(0, n), before.slice(0, n));
  assert.deepEqual(after.slice(n + 1), before.slice(n));
  assert.deepEqual(after[n], {
    name: HOLD_STEP_NAME,
    if: DEFAULT_HOLD_CONDITION,
    run: HOLD_STEP_RUN,
    env: EXPECTED_ENV,
  });
}

function usageError(fn: () => unknown, ...patterns: RegExp[]): TetherError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof TetherError, `expected a TetherError, got ${caught}`);
  assert.equal(caught.code, "usage");
  assert.ok(caught.hint, "a usage error carries a hint");
  const text = `${caught.message}\n${caught.hint}`;
  for (const p of patterns) assert.match(text, p);
  return caught;
}

/** Column of each `-` line of the steps of `job` (by scanning the text). */
function dashColumns(text: string, dashCol: number): number[] {
  return text.split("\n").filter((l) => new RegExp(`^ {${dashCol}}-(\\s|$)`).test(l)).map((l) =>
    l.indexOf("-")
  );
}

function insertedLines(r: InjectResult): string[] {
  return r.inserted.split("\n").filter((l) => l.trim() !== "");
}

const indentOf = (l: string) => l.length - l.trimStart().length;

// ------------------------------------------------------------------ happy paths

Deno.test("single job: --job is optional and every other byte is kept", () => {
  for (let n = 0; n <= 4; n++) {
    const r = injectHoldStep(SINGLE, { afterStep: n, fileName: "ci.yml" });
    assert.equal(r.job, "build");
    assertOnlyInserted(SINGLE, r);
    assertStepAt(SINGLE, r, n);
  }
});

Deno.test("comments, blank lines and quoting survive", () => {
  const r = injectHoldStep(SINGLE, { afterStep: 2 });
  for (
    const kept of [
      "# CI for the widget library.",
      "name: 'CI'",
      'FORCE_COLOR: "1"   # keep colours in logs',
      "      # Fetch the sources first.",
      "          fetch-depth: 0 # full history for `git describe`",
      "          node-version: '22'",
      "      # Install exactly what the lockfile says.",
      '          echo "done: ${{ github.sha }}"',
    ]
  ) {
    assert.ok(r.output.includes(kept + "\n"), `kept: ${kept}`);
  }
  // Every original line is still there, in order (a subsequence of the output lines).
  const out = r.output.split("\n");
  let i = 0;
  for (const line of SINGLE.split("\n")) {
    while (i < out.length && out[i] !== line) i++;
    assert.ok(i < out.length, `line missing or out of order: ${JSON.stringify(line)}`);
    i++;
  }
});

Deno.test("the hold lands between the right steps, with their comments kept attached", () => {
  const r = injectHoldStep(SINGLE, { afterStep: 2 });
  const lines = r.output.split("\n");
  const at = lines.findIndex((l) => l.includes(`name: "${HOLD_STEP_NAME}"`));
  // after step 2 (setup-node, whose last line is `cache: npm`) and its blank line style
  assert.equal(lines[at - 3], "          cache: npm");
  assert.equal(lines[at - 2], "");
  assert.match(lines[at - 1], /^ {6}# added by tether ci inject/);
  // the comment that describes step 3 still sits right above step 3
  const comment = lines.indexOf("      # Install exactly what the lockfile says.");
  assert.ok(comment > at);
  assert.equal(lines[comment + 1], "      - name: Install");
  assert.equal(r.line, at + 1); // 1-based line of the new step's `- name:`
});

Deno.test("N = 0 goes before the first step and its leading comment", () => {
  const r = injectHoldStep(SINGLE, { afterStep: 0 });
  assertStepAt(SINGLE, r, 0);
  const lines = r.output.split("\n");
  const stepsLine = lines.indexOf("    steps:");
  assert.match(lines[stepsLine + 1], /# added by tether ci inject/);
  assert.equal(lines[stepsLine + 2], `      - name: "${HOLD_STEP_NAME}"`);
  const fetch = lines.indexOf("      # Fetch the sources first.");
  assert.equal(lines[fetch - 1], ""); // blank-line style between steps is followed
  assert.equal(lines[fetch + 1], "      - uses: actions/checkout@v4");
});

Deno.test("N = number of steps appends after the last step", () => {
  const r = injectHoldStep(SINGLE, { afterStep: 4 });
  assertOnlyInserted(SINGLE, r);
  assertStepAt(SINGLE, r, 4);
  assert.ok(r.output.endsWith("TETHER_AGENT_KEY: ${{ secrets.TETHER_AGENT_KEY }}\n"));
  // the block scalar of the last step is unchanged
  assert.equal(
    steps(r.output, "build")[3].run,
    'npm test -- --reporter=dot\necho "done: ${{ github.sha }}"\n',
  );
});

Deno.test("indented steps (`steps:\\n  - `): the new step is indented like its siblings", () => {
  const r = injectHoldStep(SINGLE, { afterStep: 1 });
  const lines = insertedLines(r);
  assert.deepEqual(lines.map(indentOf), [6, 6, 8, 8, 8, 10, 10]);
  assert.match(lines[1], /^ {6}- name: /);
  // all dashes at column 6 in the file, including ours
  assert.equal(dashColumns(r.output, 6).length, 5);
});

Deno.test("flush steps (`steps:\\n- `) and 4-space indentation are followed", () => {
  const r = injectHoldStep(MULTI, { afterStep: 1, job: "lint" });
  assertOnlyInserted(MULTI, r);
  assertStepAt(MULTI, r, 1);
  const lines = insertedLines(r);
  assert.equal(indentOf(lines[1]), 8); // same column as `steps:` and the sibling dashes
  assert.match(lines[1], /^ {8}- name: /);
  assert.equal(indentOf(lines[2]), 10); // `- ` is two columns wide here
  assert.equal(indentOf(lines[5]), 14); // env children: the file's 4-space unit
});

Deno.test("a wide `-   ` gap after the dash is copied", () => {
  const r = injectHoldStep(MULTI, { afterStep: 3, job: "test" });
  assertOnlyInserted(MULTI, r);
  assertStepAt(MULTI, r, 3);
  const lines = insertedLines(r);
  assert.match(lines[1], /^ {12}- {3}name: /);
  assert.equal(indentOf(lines[2]), 16);
  assert.equal(indentOf(lines[5]), 20);
  // inserted before the next job, not inside it
  assert.match(r.output, /path: out\/report.xml\n.*# added by tether ci inject/);
  assert.match(r.output, /TETHER_AGENT_KEY: \$\{\{ secrets.TETHER_AGENT_KEY \}\}\n {4}publish:\n/);
});

Deno.test("the result is valid YAML with the secrets as env and ${{ }} intact", () => {
  const r = injectHoldStep(MULTI, { afterStep: 0, job: "publish" });
  const wf = parse(r.output) as Workflow;
  const step = wf.jobs.publish.steps[0];
  assert.deepEqual(step.env, EXPECTED_ENV);
  assert.equal(step.if, "${{ !cancelled() }}");
  assert.equal(step.run, "tether ci hold");
  // other jobs untouched
  assert.deepEqual(wf.jobs.lint, (parse(MULTI) as Workflow).jobs.lint);
  assert.deepEqual(wf.jobs.test, (parse(MULTI) as Workflow).jobs.test);
});

Deno.test("the reusable-workflow fixture still accepts its job with steps", () => {
  const r = injectHoldStep(REUSABLE, { afterStep: 2, job: "build" });
  assertOnlyInserted(REUSABLE, r);
  assertStepAt(REUSABLE, r, 2);
});

Deno.test("condition: default !cancelled(), a bare expression is wrapped, null drops if:", () => {
  const wrapped = injectHoldStep(SINGLE, { afterStep: 1, condition: "failure()" });
  assert.equal(steps(wrapped.output, "build")[1].if, "${{ failure() }}");
  const full = injectHoldStep(SINGLE, { afterStep: 1, condition: "${{ always() }}" });
  assert.equal(steps(full.output, "build")[1].if, "${{ always() }}");
  const none = injectHoldStep(SINGLE, { afterStep: 1, condition: null });
  assert.equal("if" in steps(none.output, "build")[1], false);
  assertOnlyInserted(SINGLE, none);
});

Deno.test("CRLF line endings and a missing final newline are kept", () => {
  const crlf = "on: push\r\njobs:\r\n  b:\r\n    steps:\r\n      - run: a\r\n      - run: b\r\n";
  const r = injectHoldStep(crlf, { afterStep: 1 });
  assertOnlyInserted(crlf, r);
  assertStepAt(crlf, r, 1);
  assert.equal(r.output.replaceAll("\r\n", "").includes("\n"), false);

  const noEol = "on: push\njobs:\n  b:\n    steps:\n      - run: a\n      - run: b";
  const r2 = injectHoldStep(noEol, { afterStep: 2 });
  assertStepAt(noEol, r2, 2);
  assert.ok(r2.output.startsWith(noEol + "\n      # added by tether ci inject"));
});

Deno.test("flow-style steps fall back to re-serializing, still valid", () => {
  const src = "on: push # trigger\njobs:\n  b:\n    steps: [ {run: a}, {uses: x/y@v1} ]\n";
  const r = injectHoldStep(src, { afterStep: 1 });
  assert.equal(r.layoutPreserved, false);
  assertStepAt(src, r, 1);
  assert.match(r.output, /# trigger/);
});

// ------------------------------------------------------------------ idempotence

Deno.test("a job that already has a hold step is an error (nothing written)", () => {
  usageError(() => injectHoldStep(HELD, { afterStep: 1 }), /already has a hold step/, /step 2/);
  const once = injectHoldStep(SINGLE, { afterStep: 1 });
  usageError(() => injectHoldStep(once.output, { afterStep: 3 }), /already has a hold step/);
  // another job of the same file is fine
  const lint = injectHoldStep(MULTI, { afterStep: 1, job: "lint" });
  const test = injectHoldStep(lint.output, { afterStep: 1, job: "test" });
  assertStepAt(lint.output, test, 1);
});

// ------------------------------------------------------------------ errors

Deno.test("bad N: negative, non-integer, NaN", () => {
  for (const n of [-1, 1.5, Number.NaN, Infinity]) {
    usageError(() => injectHoldStep(SINGLE, { afterStep: n }), /--after-step/, /0 or more/);
  }
});

Deno.test("N larger than the number of steps states the valid range", () => {
  usageError(
    () => injectHoldStep(SINGLE, { afterStep: 5 }),
    /out of range/,
    /"build" has 4 steps/,
    /0 to 4/,
  );
  usageError(
    () => injectHoldStep(MULTI, { afterStep: 2, job: "publish" }),
    /has 1 step\b/,
    /0 to 1/,
  );
});

Deno.test("parseAfterStep accepts only whole numbers", () => {
  assert.equal(parseAfterStep("0"), 0);
  assert.equal(parseAfterStep(" 12 "), 12);
  for (const bad of ["", "-1", "1.5", "abc", "2x", "1e3", "+1"]) {
    usageError(() => parseAfterStep(bad), /--after-step must be a whole number/);
  }
});

Deno.test("several jobs without --job: the error lists them", () => {
  const e = usageError(
    () => injectHoldStep(MULTI, { afterStep: 1, fileName: "release.yml" }),
    /release.yml has 3 jobs/,
    /--job/,
    /lint, test, publish/,
  );
  assert.match(e.hint!, /lint \(2 steps\), test \(3 steps\), publish \(1 step\)/);
});

Deno.test("unknown job: the error lists the jobs (and a near miss)", () => {
  usageError(
    () => injectHoldStep(MULTI, { afterStep: 1, job: "deploy" }),
    /no job "deploy"/,
    /lint, test, publish/,
  );
  usageError(
    () => injectHoldStep(MULTI, { afterStep: 1, job: "Lint" }),
    /did you mean --job lint\?/,
  );
  usageError(() => injectHoldStep(SINGLE, { afterStep: 1, job: "test" }), /its jobs are: build/);
});

Deno.test("a reusable-workflow job (uses:, no steps) is refused", () => {
  usageError(
    () => injectHoldStep(REUSABLE, { afterStep: 0, job: "deploy" }),
    /"deploy"/,
    /reusable workflow/,
    /deploy-reusable\.yml/,
    /no steps/,
  );
  usageError(
    () => injectHoldStep(REUSABLE, { afterStep: 0 }),
    /deploy \(reusable workflow, no steps\)/,
  );
});

Deno.test("a file that is not a workflow is refused", () => {
  usageError(
    () => injectHoldStep(COMPOSE, { afterStep: 1, fileName: "docker-compose.yml" }),
    /docker-compose.yml is not a GitHub Actions workflow/,
    /jobs:/,
  );
  usageError(() => injectHoldStep("", { afterStep: 0 }), /not a GitHub Actions workflow/, /empty/);
  usageError(() => injectHoldStep("# only a comment\n", { afterStep: 0 }), /empty/);
  usageError(() => injectHoldStep("- a\n- b\n", { afterStep: 0 }), /not a mapping/);
  usageError(
    () => injectHoldStep("jobs:\n  b:\n    steps:\n      - run: a\n", { afterStep: 0 }),
    /no `on:`/,
  );
  usageError(() => injectHoldStep("on: push\njobs: {}\n", { afterStep: 0 }), /empty/);
  usageError(() => injectHoldStep("on: push\njobs: [a]\n", { afterStep: 0 }), /not a mapping/);
  usageError(
    () =>
      injectHoldStep("on: push\njobs:\n  b:\n    steps:\n      - run: a\n---\nx: 1\n", {
        afterStep: 0,
      }),
    /several YAML documents/,
  );
  usageError(
    () => injectHoldStep("on: push\njobs:\n  b:\n    runs-on: x\n", { afterStep: 0 }),
    /has no steps/,
  );
});

Deno.test("invalid YAML is refused with its position", () => {
  usageError(
    () => injectHoldStep(INVALID, { afterStep: 1, fileName: "broken.yml" }),
    /broken.yml is not valid YAML at line 4, column 1/,
  );
  usageError(() => injectHoldStep("on: push\non: pull\njobs: {}\n", { afterStep: 0 }), /unique/);
});

Deno.test("errors are usage errors with the default file label", () => {
  const e = usageError(() => injectHoldStep(COMPOSE, { afterStep: 1 } as InjectOptions));
  assert.match(e.message, /^the workflow is not/);
  assert.equal(e.toJSON().code, "usage");
});

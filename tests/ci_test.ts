/**
 * Issue 7: `tether ci hold | attach | inject` with a real relay, real holds and real CLIs
 * (the bundle). Timeouts are short (`--connect-timeout 1s`, `--session-ttl 3s`); every
 * wait is on an output line, and every process has a hard limit.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { parse } from "yaml";
import { ciIdentity, workflowFile } from "../src/ci/env.ts";
import { formatDuration, READY_MARKER, type ReadyInfo } from "../src/ci/contract.ts";
import { injectHoldStep } from "../src/ci/inject.ts";
import { waitForHold } from "../src/ci/wait.ts";
import type { MachineView } from "../src/client/relay_client.ts";
import { TetherError } from "../src/common/errors.ts";
import { baseEnv, Proc, ROOT, run, tetherArgv, World } from "./helpers.ts";
import { hasTmux, Tmux } from "./tmux.ts";

const noTmux = !hasTmux();
if (noTmux) console.error("ci attach TTY tests skipped: tmux is not installed");

const FIXTURES = join(ROOT, "tests", "fixtures", "workflows");

/** GitHub Actions variables as a runner sets them. */
const GITHUB_ENV = {
  GITHUB_ACTIONS: "true",
  GITHUB_WORKFLOW: "CI",
  GITHUB_WORKFLOW_REF: "octo/widgets/.github/workflows/ci.yml@refs/heads/main",
  GITHUB_JOB: "build",
  GITHUB_RUN_ID: "4242",
  GITHUB_RUN_ATTEMPT: "3",
  GITHUB_REPOSITORY: "octo/widgets",
};

interface Hold {
  proc: Proc;
  /** Its own TMPDIR: the hold's state dir lives there and must be gone after. */
  tmp: string;
  continueFile: string;
}

async function startHold(
  w: World,
  args: string[],
  env: Record<string, string> = {},
  opts: { existingContinueFile?: boolean } = {},
): Promise<Hold> {
  const tmp = await Deno.makeTempDir({ dir: w.home, prefix: "hold-" });
  const continueFile = join(tmp, "continue");
  if (opts.existingContinueFile) {
    await Deno.writeTextFile(continueFile, "");
    await Deno.utime(continueFile, 1_000_000, 1_000_000);
  }
  const proc = Proc.tether(["ci", "hold", "--continue-file", continueFile, ...args], {
    env: {
      ...baseEnv(w.home),
      SHELL: "/bin/bash",
      TMPDIR: tmp,
      TETHER_RELAY: w.url,
      TETHER_AGENT_KEY: w.keys.agent_key,
      ...env,
    },
  });
  w.agents.push(proc); // stopped with the world
  return { proc, tmp, continueFile };
}

async function ready(h: Hold): Promise<ReadyInfo> {
  const m = await h.proc.waitFor(new RegExp(`^${READY_MARKER}(\\{.*\\})$`, "m"), "stdout");
  return JSON.parse(m[1]);
}

/** The exit status, or a failure after `ms`. */
async function exited(p: Proc, ms = 15_000): Promise<Deno.CommandStatus> {
  let t: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<never>((_, reject) => {
    t = setTimeout(() => {
      p.kill("SIGKILL");
      reject(new Error(`process did not end within ${ms} ms\nstderr: ${p.stderr}`));
    }, ms);
  });
  try {
    return await Promise.race([p.status, limit]);
  } finally {
    clearTimeout(t);
  }
}

/** No `tether-hold-*` state dir is left behind. */
function assertNoStateDir(h: Hold) {
  const left = [...Deno.readDirSync(h.tmp)].filter((e) => e.name.startsWith("tether-hold-"));
  assert.deepEqual(left, [], "the hold removes its state dir");
}

async function machine(w: World, id: string) {
  const m = (await w.machines()).find((x) => x.id === id);
  assert.ok(m, `machine ${id} is listed`);
  return m as unknown as MachineView;
}

function attachIn(w: World, args: string[]) {
  return Tmux.start(tetherArgv(["ci", "attach", ...args]), {
    env: w.env({ TERM: "xterm-256color" }),
  });
}

// ---------------------------------------------------------------- hold + attach

Deno.test({
  name: "ci hold + ci attach (TTY): marker, labels, exec, attach, continue file resumes",
  ignore: noTmux,
  async fn() {
    await using w = await World.create();
    const h = await startHold(w, ["--name", "wf.yml:build", "--connect-timeout", "30s"]);
    const info = await ready(h);
    assert.equal(info.name, "wf.yml:build");
    assert.equal(info.relay, w.url);
    assert.equal(info.continue_file, h.continueFile);
    assert.match(info.machine_id, /^[0-9a-f-]{36}$/);
    await h.proc.waitFor(/Attach with `tether ci attach wf\.yml:build`/);
    assert.match(h.proc.stderr, new RegExp(`resume it with \`touch ${h.continueFile}\``));

    const m = await machine(w, info.machine_id);
    assert.equal(m.online, true);
    assert.equal(m.labels.ci, "hold");
    assert.equal(m.labels.continue_file, h.continueFile);

    // exec works on a held runner (and the job key answers for the name).
    // The enrollment key is not handed down to the runner's shells.
    const x = await w.tether([
      "exec",
      "build",
      "--",
      "sh",
      "-c",
      "echo exec-ok ${TETHER_AGENT_KEY:-no-key}",
    ]);
    assert.equal(x.code, 0, x.stderr);
    assert.equal(x.stdout, "exec-ok no-key\n");

    await using t = await attachIn(w, ["build"]);
    await t.waitFor(/attached — Ctrl-D to disconnect/);
    await t.waitFor(new RegExp(`Run 'touch ${h.continueFile}' to resume the workflow`));
    await h.proc.waitFor(/1 client attached/);
    await t.line("echo in-hold-$((2+3))");
    await t.waitFor(/^in-hold-5$/m);

    await t.line(`touch ${h.continueFile}`);
    const status = await exited(h.proc);
    assert.equal(status.code, 0, h.proc.stderr);
    assert.match(h.proc.stderr, /appeared: resuming the workflow/);
    await t.waitFor(
      /the CI hold on wf\.yml:build ended: the continue file appeared; the workflow resumes; detached[\s\S]*\[exited 0\]/,
    );
    const left = await w.machines();
    assert.ok(!left.some((m) => m.id === info.machine_id), "the ended hold left the registry");
    assertNoStateDir(h);
  },
});

Deno.test({
  name: "ci hold: --session-ttl warns attached clients, then ends the hold (--on-timeout fail)",
  ignore: noTmux,
  async fn() {
    await using w = await World.create();
    const h = await startHold(w, [
      "--name",
      "ttl-box",
      "--connect-timeout",
      "30s",
      "--session-ttl",
      "3s",
      "--on-timeout",
      "fail",
    ]);
    await ready(h);
    await using t = await attachIn(w, ["ttl-box"]);
    await t.waitFor(/attached —/);
    const attachedAt = Date.now();
    await t.waitFor(
      /\[tether: this CI hold ends in 3s \(--session-ttl 3s\); run 'touch .*' to resume/,
    );
    const status = await exited(h.proc);
    assert.equal(status.code, 1, h.proc.stderr);
    assert.ok(Date.now() - attachedAt >= 2000, "the TTL runs from the first attach");
    assert.match(h.proc.stderr, /reached its --session-ttl of 3s; failing this step/);
    await t.waitFor(
      /the CI hold on ttl-box ended: .*session-ttl[\s\S]*detached[\s\S]*\[exited 0\]/,
    );
    assertNoStateDir(h);
  },
});

// ---------------------------------------------------------------- timeouts, signals

Deno.test("ci hold: --connect-timeout continues (0) or fails (1), saying why", async () => {
  await using w = await World.create();
  const cont = await startHold(w, [
    "--name",
    "t-cont",
    "--connect-timeout",
    "2s",
    "--reminder",
    "1s",
  ]);
  const fail = await startHold(w, [
    "--name",
    "t-fail",
    "--connect-timeout",
    "1s",
    "--on-timeout",
    "fail",
  ]);
  // A relay that cannot be reached is retried until the connect timeout, then said.
  const nowhere = await startHold(w, ["--name", "t-nowhere", "--connect-timeout", "1s"], {
    TETHER_RELAY: "ws://127.0.0.1:9",
  });
  const [a, b, c] = await Promise.all([
    exited(cont.proc),
    exited(fail.proc),
    exited(nowhere.proc),
  ]);
  assert.equal(c.code, 0, nowhere.proc.stderr);
  assert.match(
    nowhere.proc.stderr,
    /the relay at ws:\/\/127\.0\.0\.1:9 could not be reached within 1s/,
  );
  assert.equal(nowhere.proc.stdout, "", "no ready marker");
  assert.equal(a.code, 0, cont.proc.stderr);
  assert.equal(b.code, 1, fail.proc.stderr);
  assert.match(cont.proc.stdout, /::tether-ready::/);
  assert.match(
    cont.proc.stderr,
    /nobody attached within 2s \(--connect-timeout\); resuming the workflow/,
  );
  assert.match(
    cont.proc.stderr,
    /still holding \((waiting; attach with|connecting to)/,
    "a reminder line",
  );
  assert.match(
    fail.proc.stderr,
    /nobody attached within 1s \(--connect-timeout\); failing this step \(--on-timeout fail\)/,
  );
  const ms = await w.machines();
  assert.deepEqual(ms, [], "ended holds leave the registry");
  for (const h of [cont, fail, nowhere]) assertNoStateDir(h);
});

Deno.test("ci hold: SIGTERM ends it at once, the machine leaves, state dir removed; old continue file", async () => {
  await using w = await World.create();
  const h = await startHold(w, ["--name", "cancelled"]);
  // A continue file left over from before is not taken as "resume" (nor deleted) …
  const old = await startHold(w, ["--name", "leftover"], {}, { existingContinueFile: true });
  const info = await ready(h);
  await ready(old);
  await old.proc.waitFor(/already exists \(left over\?\); touch it again to resume/);
  // … but touching it resumes.
  const now = new Date();
  await Deno.utime(old.continueFile, now, now);
  assert.equal((await exited(old.proc)).code, 0, old.proc.stderr);
  assert.ok(await Deno.stat(old.continueFile));

  h.proc.kill("SIGTERM");
  const status = await exited(h.proc, 8000);
  assert.equal(status.code, 143);
  assert.match(h.proc.stderr, /SIGTERM: the job was cancelled/);
  assert.ok(!(await w.machines()).some((m) => m.id === info.machine_id), "it left the registry");
  assertNoStateDir(h);
});

Deno.test("ci hold: configuration errors fail the step at once", async () => {
  await using w = await World.create();
  const env = { ...baseEnv(w.home), TETHER_RELAY: w.url };
  const noKey = await run(["ci", "hold"], { env, timeoutMs: 10_000 });
  assert.equal(noKey.code, 1);
  assert.match(noKey.stderr, /no agent key for the hold[\s\S]*TETHER_AGENT_KEY/);
  const badKey = await run(["ci", "hold", "--json"], {
    env: { ...env, TETHER_AGENT_KEY: "tether_agent_000000000000_" + "0".repeat(40) },
    timeoutMs: 10_000,
  });
  assert.equal(badKey.code, 1);
  assert.equal(JSON.parse(badKey.stdout.trim().split("\n").pop()!).error.code, "unauthenticated");
  const usage = await run(["ci", "hold", "--on-timeout", "maybe"], { env, timeoutMs: 10_000 });
  assert.equal(usage.code, 2);
});

// ---------------------------------------------------------------- ci attach

Deno.test("ci attach without a TTY: waits for the hold, prints how to connect; --json", async () => {
  await using w = await World.create();
  // Started before the hold: it waits (stdin is /dev/null, nothing prompts).
  const waiting = w.spawn(["ci", "attach", "build", "--wait", "30s"]);
  await waiting.waitFor(/waiting up to 30s for a CI hold matching 'build'/);

  const workspace = Deno.realPathSync(await Deno.makeTempDir({ dir: w.home, prefix: "ws-" }));
  // Default name from the GitHub variables; shells and execs start in the job's workspace.
  const h = await startHold(w, [], { ...GITHUB_ENV, GITHUB_WORKSPACE: workspace });
  const info = await ready(h);
  assert.equal(info.name, "ci.yml:build");
  await h.proc.waitFor(/^::notice title=tether ci hold::ci\.yml:build is held\./m, "stdout");

  assert.equal((await exited(waiting)).code, 0, waiting.stderr);
  const connect = `tether --relay ${w.url} connect ${info.machine_id}`;
  assert.match(waiting.stdout, new RegExp(`^connect  ${connect}$`, "m"));
  assert.match(
    waiting.stdout,
    new RegExp(`^machine  ci\\.yml:build \\(${info.machine_id}\\)$`, "m"),
  );

  const j = await w.tether(["ci", "attach", "build", "--json"], { timeoutMs: 15_000 });
  assert.equal(j.code, 0, j.stderr);
  const got = JSON.parse(j.stdout);
  assert.deepEqual(got, {
    machine_id: info.machine_id,
    name: "ci.yml:build",
    hostname: got.hostname,
    relay: w.url,
    labels: {
      ci: "hold",
      continue_file: h.continueFile,
      run_id: "4242",
      run_attempt: "3",
      repository: "octo/widgets",
    },
    continue_file: h.continueFile,
    connect,
    resume: `tether --relay ${w.url} exec ${info.machine_id} -- touch ${h.continueFile}`,
  });

  const pwd = await w.tether(["exec", info.machine_id, "--", "pwd"]);
  assert.equal(pwd.stdout, `${workspace}\n`, pwd.stderr);

  // The resume command works from outside. An exec counts as attaching (it starts the
  // session TTL) but is no attached client.
  const argv = got.resume.split(" ").slice(1);
  const r = await w.tether(argv, { timeoutMs: 15_000 });
  assert.equal(r.code, 0, r.stderr);
  assert.equal((await exited(h.proc)).code, 0);
  assert.match(h.proc.stderr, /a command ran on the runner \(tether exec\)/);
  assert.doesNotMatch(h.proc.stderr, /clients? attached/);
  assertNoStateDir(h);
});

Deno.test("ci attach: --wait running out is `timeout`, with a hint", async () => {
  await using w = await World.create();
  await w.startAgent("plainbox");
  const [none, plain, human] = await Promise.all([
    w.tether(["ci", "attach", "nosuch", "--wait", "1s", "--json"], { timeoutMs: 15_000 }),
    w.tether(["ci", "attach", "plainbox", "--wait", "0", "--json"], { timeoutMs: 15_000 }),
    w.tether(["ci", "attach", "nosuch", "--wait", "500ms"], { timeoutMs: 15_000 }),
  ]);
  assert.equal(none.code, 1);
  const e = JSON.parse(none.stdout).error;
  assert.equal(e.code, "timeout");
  assert.match(e.message, /no CI hold matching 'nosuch' came online within 1s/);
  assert.equal(plain.code, 1);
  assert.match(JSON.parse(plain.stdout).error.hint, /plainbox .* is not a CI hold/);
  assert.equal(human.code, 1);
  assert.equal(human.stdout, "");
  assert.match(human.stderr, /tether: no CI hold matching 'nosuch' came online within 500ms/);
});

Deno.test("ci attach: a hold that ends before we attach is an error; on timeout it is named", async () => {
  await using w = await World.create();
  const waiting = w.spawn(["ci", "attach", "gone-job", "--wait", "30s"]);
  await waiting.waitFor(/waiting up to 30s/);
  // Freeze the waiting client while a hold comes and goes, as a laptop asleep would.
  Deno.kill(waiting.pid, "SIGSTOP");
  try {
    const h = await startHold(w, ["--name", "wf.yml:gone-job"]);
    await ready(h);
    await Deno.writeTextFile(h.continueFile, "");
    assert.equal((await exited(h.proc)).code, 0);
  } finally {
    Deno.kill(waiting.pid, "SIGCONT");
  }
  const status = await exited(waiting);
  assert.equal(status.code, 1, waiting.stderr);
  assert.match(
    waiting.stderr,
    /the CI hold wf\.yml:gone-job \([0-9a-f]{8}\) went offline before we could attach: its job ended/,
  );

  // Started after the hold ended: an earlier run's hold does not end the wait, but is named.
  const late = await w.tether(["ci", "attach", "gone-job", "--wait", "1s", "--json"], {
    timeoutMs: 15_000,
  });
  assert.equal(late.code, 1);
  const e = JSON.parse(late.stdout).error;
  assert.equal(e.code, "timeout");
  assert.match(e.hint, /the last hold matching it, wf\.yml:gone-job .*went offline .* ago/);
});

// ---------------------------------------------------------------- ci inject

Deno.test("ci inject: fixture workflows through the CLI", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tether-inject-" });
  try {
    const env = baseEnv(dir);
    const fx = (name: string) => join(FIXTURES, name);
    const single = await Deno.readTextFile(fx("single_job.yml"));
    const out = join(dir, "out.yml");
    const inPlace = join(dir, "multi.yml");
    await Deno.copyFile(fx("multi_job.yml"), inPlace);
    const cli = (args: string[]) => run(["ci", "inject", ...args], { env, timeoutMs: 15_000 });
    const [
      stdout,
      toFile,
      inPlaceRun,
      json,
      badN,
      notNumber,
      unknownJob,
      severalJobs,
      compose,
      missing,
    ] = await Promise.all([
      cli([fx("single_job.yml"), "--after-step", "2"]),
      cli([fx("single_job.yml"), "--after-step", "4", "-o", out]),
      cli([inPlace, "--job", "test", "--after-step", "1", "-o", inPlace]),
      cli([fx("multi_job.yml"), "--job", "lint", "--after-step", "0", "--json"]),
      cli([fx("single_job.yml"), "--after-step", "9", "-o", join(dir, "bad.yml")]),
      cli([fx("single_job.yml"), "--after-step", "two"]),
      cli([fx("multi_job.yml"), "--job", "nope", "--after-step", "1"]),
      cli([fx("multi_job.yml"), "--after-step", "1"]),
      cli([fx("docker-compose.yml"), "--after-step", "1"]),
      cli([join(dir, "missing.yml"), "--after-step", "1"]),
    ]);

    // stdout: the library's output exactly; comments and layout kept, step 3 is the hold.
    assert.equal(stdout.code, 0, stdout.stderr);
    assert.equal(stdout.stdout, injectHoldStep(single, { afterStep: 2 }).output);
    for (const line of single.split("\n")) assert.ok(stdout.stdout.includes(line), line);
    const steps = (parse(stdout.stdout) as { jobs: { build: { steps: { name?: string }[] } } })
      .jobs.build.steps;
    assert.deepEqual(steps.map((s) => s.name), [
      undefined,
      "Set up Node",
      "tether: hold for debugging",
      "Install",
      "Test",
    ]);
    assert.match(stdout.stderr, /added the hold step to job "build" as step 3 of 5/);

    assert.equal(toFile.code, 0, toFile.stderr);
    assert.equal(toFile.stdout, "");
    const written = await Deno.readTextFile(out);
    assert.equal(written, injectHoldStep(single, { afterStep: 4 }).output);
    assert.match(toFile.stderr, new RegExp(`as step 5 of 5 \\(${out}:\\d+\\)`));

    assert.equal(inPlaceRun.code, 0, inPlaceRun.stderr);
    const multi = parse(await Deno.readTextFile(inPlace)) as {
      jobs: Record<string, { steps: { name?: string; run?: string }[] }>;
    };
    assert.equal(multi.jobs.test.steps[1].run, "tether ci hold");
    assert.equal(multi.jobs.test.steps.length, 4);
    assert.equal(multi.jobs.lint.steps.length, 2);

    assert.equal(json.code, 0, json.stderr);
    const j = JSON.parse(json.stdout);
    assert.equal(j.job, "lint");
    assert.equal(j.step, 1);
    assert.equal(j.steps, 3);
    assert.equal(j.output, null);
    assert.equal((parse(j.workflow) as typeof multi).jobs.lint.steps[0].run, "tether ci hold");

    for (
      const [r, re] of [
        [badN, /--after-step 9 is out of range: job "build" has 4 steps[\s\S]*use 0 to 4/],
        [notNumber, /--after-step must be a whole number/],
        [unknownJob, /no job "nope" in .*; its jobs are: lint, test, publish/],
        [severalJobs, /has 3 jobs; say which one with --job: lint, test, publish/],
        [compose, /is not a GitHub Actions workflow/],
        [missing, /cannot read .*missing\.yml: no such file/],
      ] as const
    ) {
      assert.equal(r.code, 2, r.stderr);
      assert.equal(r.stdout, "", "nothing written on an error");
      assert.match(r.stderr, re);
    }
    assert.equal(
      await Deno.stat(join(dir, "bad.yml")).then(() => true, () => false),
      false,
      "-o is not created on an error",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------- pure parts

Deno.test("ci hold: default name and labels from the CI environment", () => {
  const gh = ciIdentity((k) => (GITHUB_ENV as Record<string, string>)[k], "runner-7");
  assert.deepEqual(gh, {
    name: "ci.yml:build",
    labels: { run_id: "4242", run_attempt: "3", repository: "octo/widgets" },
    provider: "github",
  });
  const noRef = ciIdentity(
    (k) => ({ GITHUB_ACTIONS: "true", GITHUB_WORKFLOW: "Release", GITHUB_JOB: "pub" })[k],
    "h",
  );
  assert.equal(noRef.name, "Release:pub");
  const gl = ciIdentity(
    (k) => ({ GITLAB_CI: "true", CI_JOB_NAME: "test", CI_PIPELINE_ID: "9" })[k],
    "h",
  );
  assert.equal(gl.name, ".gitlab-ci.yml:test");
  assert.deepEqual(gl.labels, { pipeline_id: "9" });
  assert.deepEqual(ciIdentity(() => undefined, "laptop"), { name: "laptop", labels: {} });
  assert.equal(workflowFile("o/r/.github/workflows/x.yaml@refs/pull/1/merge"), "x.yaml");
  assert.equal(formatDuration(90 * 60_000), "1h30m");
  assert.equal(formatDuration(3000), "3s");
  assert.equal(formatDuration(500), "500ms");
});

function view(id: string, name: string, online: boolean, hold = true): MachineView {
  return {
    id,
    name,
    hostname: "h",
    online,
    last_seen: "",
    heartbeat_age_ms: online ? 0 : 60_000,
    labels: hold ? { ci: "hold" } : {},
    sessions: 0,
    os: "linux",
    arch: "x86_64",
    version: "0",
  };
}

/** Runs waitForHold against a scripted sequence of `machines` answers on a fake clock. */
async function scripted(answers: MachineView[][], query: string, waitMs = 10_000) {
  let t = 0;
  let i = 0;
  return await waitForHold(
    () => Promise.resolve(answers[Math.min(i++, answers.length - 1)]),
    query,
    { waitMs, pollMs: 500, now: () => t, sleep: (ms) => Promise.resolve(void (t += ms)) },
  );
}

async function rejectsWith(p: Promise<unknown>, code: string, re?: RegExp) {
  const e = await p.then(() => undefined, (e) => e);
  assert.ok(e instanceof TetherError, `expected a TetherError, got ${e}`);
  assert.equal(e.code, code);
  if (re) assert.match(`${e.message} ${e.hint}`, re);
}

Deno.test("ci attach: wait rules (old holds ignored, job key, gone, ambiguous)", async () => {
  const old = view("old-1", "ci.yml:build", false);
  const fresh = view("new-1", "ci.yml:build", true);
  // An offline hold of an earlier run does not make the name ambiguous nor end the wait.
  assert.equal((await scripted([[old], [old], [old, fresh]], "build")).id, "new-1");
  // A non-hold machine never answers.
  await rejectsWith(
    scripted([[view("p", "build", true, false)]], "build", 2000),
    "timeout",
    /not a CI hold/,
  );
  // One that appeared after the wait began and is offline (for 2 s) is gone.
  const came = view("c", "ci.yml:build", false);
  await rejectsWith(scripted([[old], [old, came]], "build"), "machine_offline", /went offline/);
  // ... unless it comes back first (a reconnect).
  assert.equal(
    (await scripted([[], [came], [{ ...came, online: true }]], "build")).id,
    "c",
  );
  // Two online holds for one job key (matrix legs): ambiguous at once.
  await rejectsWith(
    scripted([[fresh, view("new-2", "other.yml:build", true)]], "build"),
    "ambiguous_machine",
  );
});

Deno.test("ci hold: a plain exec on the runner counts as attaching (the connect timeout stops)", async () => {
  await using w = await World.create();
  const h = await startHold(w, [
    "--name",
    "exec-counts",
    "--connect-timeout",
    "3s",
    "--session-ttl",
    "60s",
    "--on-timeout",
    "fail",
  ]);
  const info = await ready(h);
  const r = await w.tether(["exec", info.machine_id, "--", "true"]);
  assert.equal(r.code, 0, r.stderr);
  await h.proc.waitFor(/a command ran on the runner/);
  // Past the 3 s connect timeout the hold is still there …
  await new Promise((res) => setTimeout(res, 3500));
  assert.doesNotMatch(h.proc.stderr, /nobody attached/);
  // … until it is resumed.
  await Deno.writeTextFile(h.continueFile, "");
  assert.equal((await exited(h.proc)).code, 0, h.proc.stderr);
});

Deno.test("ci hold: `tether exec … touch CONTINUE` resumes 50 times in a row, each exec exits 0", async () => {
  await using w = await World.create();
  const ROUNDS = 10;
  const AT_ONCE = 5;
  for (let round = 0; round < ROUNDS; round++) {
    await Promise.all(Array.from({ length: AT_ONCE }, async (_, i) => {
      // Checking the continue file every millisecond makes the race as likely as it gets:
      // the hold sees the file while the `touch` that made it has not reported yet.
      const h = await startHold(w, ["--name", `resume-${round}-${i}`, "--poll", "1ms"]);
      const info = await ready(h);
      const r = await w.tether(["exec", info.machine_id, "--", "touch", h.continueFile]);
      assert.equal(r.code, 0, `round ${round}, hold ${i}: ${r.stderr}`);
      assert.equal((await exited(h.proc)).code, 0, h.proc.stderr);
    }));
  }
});

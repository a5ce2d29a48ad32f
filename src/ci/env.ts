/**
 * The default machine name and labels of a `tether ci hold`, from the CI environment.
 *
 * - GitHub Actions (`GITHUB_ACTIONS=true`): `WORKFLOW_FILE:JOB_ID`, e.g. `ci.yml:build`
 *   (the file from `GITHUB_WORKFLOW_REF`, else the workflow's name from `GITHUB_WORKFLOW`;
 *   the job id from `GITHUB_JOB`), labels `run_id`, `run_attempt` and `repository`.
 *   The resolver's job-key rule then lets `tether ci attach build` find it.
 * - GitLab CI (`GITLAB_CI=true`): `.gitlab-ci.yml:JOB_NAME`, labels `pipeline_id`, `job_id`,
 *   `project`.
 * - Anywhere else: the hostname, no extra labels.
 *
 * Matrix legs of one job share a name; `ci attach` then reports `ambiguous_machine`
 * with the candidates, and a machine id picks one.
 */
export interface CiIdentity {
  name: string;
  labels: Record<string, string>;
  /** "github", "gitlab", or undefined when no CI was recognized. */
  provider?: "github" | "gitlab";
}

type Env = (key: string) => string | undefined;

export function ciIdentity(env: Env, hostname: string): CiIdentity {
  const get = (k: string) => env(k)?.trim() || undefined;
  if (get("GITHUB_ACTIONS") === "true") {
    const job = get("GITHUB_JOB");
    const workflow = workflowFile(get("GITHUB_WORKFLOW_REF")) ?? get("GITHUB_WORKFLOW");
    const labels: Record<string, string> = {};
    put(labels, "run_id", get("GITHUB_RUN_ID"));
    put(labels, "run_attempt", get("GITHUB_RUN_ATTEMPT"));
    put(labels, "repository", get("GITHUB_REPOSITORY"));
    const name = job ? (workflow ? `${workflow}:${job}` : job) : hostname;
    return { name, labels, provider: "github" };
  }
  if (get("GITLAB_CI") === "true") {
    const job = get("CI_JOB_NAME");
    const labels: Record<string, string> = {};
    put(labels, "pipeline_id", get("CI_PIPELINE_ID"));
    put(labels, "job_id", get("CI_JOB_ID"));
    put(labels, "project", get("CI_PROJECT_PATH"));
    return { name: job ? `.gitlab-ci.yml:${job}` : hostname, labels, provider: "gitlab" };
  }
  return { name: hostname, labels: {} };
}

/** `owner/repo/.github/workflows/ci.yml@refs/heads/main` → `ci.yml`. */
export function workflowFile(ref: string | undefined): string | undefined {
  if (!ref) return undefined;
  const path = ref.split("@")[0];
  const base = path.slice(path.lastIndexOf("/") + 1);
  return base || undefined;
}

function put(labels: Record<string, string>, k: string, v: string | undefined) {
  if (v) labels[k] = v;
}

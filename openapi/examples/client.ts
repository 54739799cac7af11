// A small MeshHook client on fetch, typed by `openapi-typescript` from ../openapi.json
// (run ./typecheck.sh). It lists runs, reads a run and resumes it from its failed step; it approves a
// paused run exactly once, marks a failed step succeeded with an output given by hand, and
// recovers every run an outage broke with one bulk resume.
import type { components, operations, paths } from "./generated/api";

export type Run = components["schemas"]["RunRead"];
export type RunDetail = components["schemas"]["RunDetail"];
export type Step = components["schemas"]["StepRead"];
export type RunList = components["schemas"]["RunList"];
export type ResumeRequest = components["schemas"]["ResumeRequest"];
export type ResumePlan = components["schemas"]["ResumePlanRead"];
export type Problem = components["schemas"]["Problem"];
export type StepOverride = components["schemas"]["StepOverride"];
export type RunStatus = Run["status"];
export type ListRunsQuery = NonNullable<operations["runs-list"]["parameters"]["query"]>;
export type BulkResumeRequest = components["schemas"]["BulkResumeCreate"];
export type BulkResume = components["schemas"]["BulkResumeRead"];
export type BulkItem = components["schemas"]["BulkItem"];
export type BulkEvent = components["schemas"]["BulkEvent"];

type RunPath = keyof paths & `/runs${string}`;

/** An RFC 9457 problem+json answer, with the fields the resume endpoint adds. */
export class ProblemError extends Error {
  constructor(readonly problem: Problem) {
    super(`${problem.status} ${problem.title}: ${problem.detail ?? ""}`);
  }
  get eligibleSteps(): string[] {
    return this.problem.eligible_steps ?? [];
  }
  get activeRunId(): string | null {
    return this.problem.active_run_id ?? null;
  }
  /** 409 from resume: the run that already finished this run's work. */
  get resolvedBy(): string | null {
    return this.problem.resolved_by ?? null;
  }
}

export class MeshHookClient {
  constructor(
    private readonly baseUrl: string,
    private readonly token: string,
  ) {}

  private async request<T>(method: "GET" | "POST", path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    const init: RequestInit = {
      method,
      headers: { Authorization: `Bearer ${this.token}`, Accept: "application/json", ...headers },
    };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      (init.headers as Record<string, string>)["Content-Type"] = "application/json";
    }
    const res = await fetch(this.baseUrl + path, init);
    if (!res.ok) {
      throw new ProblemError((await res.json()) as Problem);
    }
    return (await res.json()) as T;
  }

  /** GET /runs — newest first; follow `next_cursor` for the next page. */
  listRuns(query: ListRunsQuery = {}): Promise<RunList> {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) params.set(key, String(value));
    }
    const qs = params.toString();
    const path: RunPath = "/runs";
    return this.request<operations["runs-list"]["responses"][200]["content"]["application/json"]>(
      "GET", qs ? `${path}?${qs}` : path);
  }

  /** GET /runs/{run_id} — the run with its steps and the runs resumed from it. */
  getRun(runId: paths["/runs/{run_id}"]["get"]["parameters"]["path"]["run_id"]): Promise<RunDetail> {
    return this.request<RunDetail>("GET", `/runs/${encodeURIComponent(runId)}`);
  }

  /** GET /runs/{run_id}/resume-plan — what a resume from `fromStep` would reuse and re-execute. */
  resumePlan(runId: string, fromStep: string): Promise<ResumePlan> {
    const query: operations["runs-resume-plan"]["parameters"]["query"] = { from_step: fromStep };
    return this.request<ResumePlan>("GET", `/runs/${encodeURIComponent(runId)}/resume-plan?${new URLSearchParams(query)}`);
  }

  /** POST /runs/{run_id}/resume-plan — the same preview for a full resume body (rerun, outputs). */
  resumePlanFor(runId: string, body: ResumeRequest): Promise<ResumePlan> {
    return this.request<operations["runs-resume-plan-body"]["responses"][200]["content"]["application/json"]>(
      "POST", `/runs/${encodeURIComponent(runId)}/resume-plan`, body);
  }

  /** POST /runs/{run_id}/resume — 202 with the new run; retries with the same key return the same run. */
  resume(runId: string, body: ResumeRequest, idempotencyKey?: string): Promise<RunDetail> {
    const headers: Record<string, string> = {};
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    return this.request<operations["runs-resume"]["responses"][202]["content"]["application/json"]>(
      "POST", `/runs/${encodeURIComponent(runId)}/resume`, body, headers);
  }

  /** POST /projects/{project_id}/bulk-resumes — 202 with the job, or 200 with the preview when `dry_run`. */
  bulkResume(projectId: paths["/projects/{project_id}/bulk-resumes"]["post"]["parameters"]["path"]["project_id"],
             body: BulkResumeRequest, idempotencyKey?: string): Promise<BulkResume> {
    const headers: Record<string, string> = {};
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    return this.request<operations["bulk-resumes-create"]["responses"][202]["content"]["application/json"]>(
      "POST", `/projects/${encodeURIComponent(projectId)}/bulk-resumes`, body, headers);
  }

  /** GET /bulk-resumes/{bulk_id} — progress and the outcome of every run. */
  getBulkResume(bulkId: string): Promise<BulkResume> {
    return this.request<operations["bulk-resumes-get"]["responses"][200]["content"]["application/json"]>(
      "GET", `/bulk-resumes/${encodeURIComponent(bulkId)}`);
  }

  /** POST /bulk-resumes/{bulk_id}/cancel — runs not yet resumed are skipped. */
  cancelBulkResume(bulkId: string): Promise<BulkResume> {
    return this.request<BulkResume>("POST", `/bulk-resumes/${encodeURIComponent(bulkId)}/cancel`);
  }
}

const FINAL: readonly RunStatus[] = ["succeeded", "failed", "cancelled"];

export function isFinal(run: Run): boolean {
  return FINAL.includes(run.status);
}

/** The step a console would offer to resume from: the first failed (or paused) eligible step. */
export function resumableStep(run: RunDetail): Step | undefined {
  return run.steps.find((s) => s.eligible_for_resume && (s.status === "failed" || s.status === "paused"));
}

/** Resume every failed run of a workflow from its failed step and return the new runs. */
export async function resumeFailedRuns(client: MeshHookClient, workflowId: string, reason: string): Promise<RunDetail[]> {
  const resumed: RunDetail[] = [];
  let cursor: string | null | undefined;
  do {
    const page = await client.listRuns({ workflow_id: workflowId, status: "failed", limit: 50, ...(cursor ? { cursor } : {}) });
    for (const summary of page.items) {
      const run = await client.getRun(summary.id);
      const step = resumableStep(run);
      if (!step || run.resumed_runs.length > 0) continue;
      try {
        const plan = await client.resumePlan(run.id, step.key);
        const child = await client.resume(run.id, { from_step: plan.from_step, reason, workflow_version: "original" },
                                          `${run.id}:${step.key}`);
        resumed.push(child);
      } catch (err) {
        if (err instanceof ProblemError && err.problem.status === 409 && err.activeRunId) continue; // already resuming
        throw err;
      }
    }
    cursor = page.next_cursor;
  } while (cursor);
  return resumed;
}

/** "Approve once": continue a paused run from its pause step. A second click, another operator or a retry
 * never runs the downstream steps twice: the server answers 409 with `resolved_by` (already approved and
 * finished) or `active_run_id` (approved and still running), and this returns that run's id instead. */
export async function approveOnce(client: MeshHookClient, runId: string, pauseStep: string, reason: string): Promise<string> {
  try {
    const child = await client.resume(runId, { from_step: pauseStep, reason }, `approve:${runId}:${pauseStep}`);
    return child.id;
  } catch (err) {
    if (err instanceof ProblemError && err.problem.status === 409) {
      const existing = err.resolvedBy ?? err.activeRunId;
      if (existing) return existing;
    }
    throw err;
  }
}

/** "Mark succeeded": the failed step's work was done by hand (say, a payment taken by phone). Record its
 * output without calling the upstream again and let the rest of the run continue with it. */
export async function markSucceeded(client: MeshHookClient, runId: string, stepKey: string, output: unknown,
                                    reason: string): Promise<RunDetail> {
  const body: ResumeRequest = { from_step: stepKey, outputs: { [stepKey]: output }, reason };
  const plan = await client.resumePlanFor(runId, body);
  if (!plan.override.includes(stepKey)) throw new Error(`step ${stepKey} would not take the output`);
  const child = await client.resume(runId, body, `mark:${runId}:${stepKey}`);
  const step = child.steps.find((s) => s.key === stepKey);
  const override: StepOverride | null | undefined = step?.override;
  if (!override || step?.reused_from) throw new Error("the server did not record the output by hand");
  return child;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Recover after an outage: every run of `workflowId` that failed at `failedStep` since `since` is
 * resumed by one bulk resume, `rate` runs per second. A dry run first shows what would happen; the
 * Idempotency-Key makes a retried call return the same job. `onProgress` sees the job as it moves.
 * Returns the preview (each run's plan, or why it would be skipped or rejected) and the finished job.
 */
export async function recoverAfterOutage(
  client: MeshHookClient, projectId: string, workflowId: string, failedStep: string, since: string,
  reason: string, rate = 50, onProgress: (job: BulkResume) => void = () => {},
): Promise<{ preview: BulkResume; job: BulkResume | null }> {
  const body: BulkResumeRequest = {
    filter: { workflow_id: workflowId, status: ["failed"], failed_step: failedStep, created_after: since },
    reason,
    max_per_second: rate,
  };
  const preview = await client.bulkResume(projectId, { ...body, dry_run: true });
  if (preview.accepted === 0) return { preview, job: null }; // nothing would be resumed; preview.items say why
  let job = await client.bulkResume(projectId, body, `outage:${workflowId}:${failedStep}:${since}`);
  while (job.finished_at === null) {
    onProgress(job);
    await sleep(500);
    job = await client.getBulkResume(job.id as string);
  }
  onProgress(job);
  return { preview, job };
}

/** The runs a bulk resume did not resume, with the reason: what an operator looks at next. */
export function notResumed(job: BulkResume): BulkItem[] {
  return job.items.filter((i) => i.outcome === "skipped" || i.outcome === "rejected");
}

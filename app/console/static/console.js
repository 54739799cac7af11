// The reference run console: a needs-attention list, a run page (DAG, steps, live timeline,
// lineage), the resume dialog with its plan, pause approval and bulk-resume progress.
// Every value from the API is put into the page as text, never as HTML.
import { ApiError, api, followEvents, getToken, setToken, tokenSubject } from "./api.js";
import { STATUS_ICON, drawDag } from "./dag.js";

const main = document.getElementById("main");
const toast = document.getElementById("toast");
let pageAbort = new AbortController(); // aborts the current page's streams when navigating away
let projects = null; // [{id, name, role}]

// ------------------------------------------------------------------ small DOM helpers
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, `${STATUS_ICON[status] || ""} ${status}`);
}

function json(value) {
  return h("pre", { class: "json" }, value === undefined ? "" : JSON.stringify(value, null, 2));
}

function when(ts) {
  return ts ? new Date(ts).toLocaleString() : "—";
}

function showProblem(target, err) {
  const p = err instanceof ApiError ? err.problem : { detail: String(err) };
  const lines = [h("strong", {}, `${err.status || ""} ${p.title || "Error"}`.trim()), h("div", {}, p.detail || "")];
  if (p.eligible_steps) lines.push(h("div", {}, `Eligible steps: ${p.eligible_steps.join(", ") || "none"}`));
  if (p.active_run_id) lines.push(h("div", {}, "A resumed run is already in flight: ", runLink(p.active_run_id)));
  if (p.resolved_by) lines.push(h("div", {}, "Already resolved by run ", runLink(p.resolved_by)));
  if (Array.isArray(p.errors)) {
    lines.push(h("ul", {}, p.errors.map((e) => h("li", {}, `${(e.loc || []).join(".")}: ${e.msg}`))));
  }
  target.replaceChildren(...lines);
  target.hidden = false;
}

function flash(message) {
  toast.textContent = message;
  toast.hidden = false;
  clearTimeout(flash.t);
  flash.t = setTimeout(() => { toast.hidden = true; }, 6000);
}

function runLink(id) {
  return h("a", { href: `#/runs/${id}`, class: "mono" }, String(id).slice(0, 8));
}

async function loadProjects(force = false) {
  if (!projects || force) projects = (await api("GET", "/projects")).data.items;
  return projects;
}

function roleIn(projectId) {
  return projects?.find((p) => p.id === projectId)?.role || null;
}

const canEdit = (projectId) => ["editor", "owner"].includes(roleIn(projectId));

// ------------------------------------------------------------------ sign in
function signIn() {
  const area = h("textarea", { id: "token", rows: 4, required: true, spellcheck: "false", autocomplete: "off" });
  const err = h("div", { class: "problem", role: "alert", hidden: true });
  const form = h("form", { class: "card signin", onsubmit: async (e) => {
    e.preventDefault();
    setToken(area.value);
    try {
      await loadProjects(true);
      route();
    } catch (x) {
      setToken(null);
      showProblem(err, x);
    }
  } },
  h("h1", {}, "Sign in"),
  h("p", {}, "Paste a Supabase access token (a JWT). It stays in this tab's session storage and is sent only to this API."),
  h("label", { for: "token" }, "Access token"), area, err,
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")));
  main.replaceChildren(form);
  area.focus();
}

// ------------------------------------------------------------------ needs attention
async function listPage(params) {
  await loadProjects();
  const q = new URLSearchParams(params);
  const filter = { project_id: q.get("project_id") || "", status: q.get("status") || "attention",
                   workflow_id: q.get("workflow_id") || "" };
  const query = new URLSearchParams({ limit: "20" });
  if (filter.project_id) query.set("project_id", filter.project_id);
  if (filter.workflow_id) query.set("workflow_id", filter.workflow_id);
  if (filter.status === "attention") query.set("unresolved", "true");
  else if (filter.status !== "all") query.set("status", filter.status);
  if (q.get("cursor")) query.set("cursor", q.get("cursor"));

  const projectSel = h("select", { id: "f-project", name: "project_id" },
    h("option", { value: "" }, "All my projects"),
    projects.map((p) => h("option", { value: p.id, selected: p.id === filter.project_id }, `${p.name} (${p.role})`)));
  const statusSel = h("select", { id: "f-status", name: "status" },
    [["attention", "Needs attention (failed, paused, cancelled; not resolved)"], ["failed", "failed"], ["paused", "paused"],
     ["cancelled", "cancelled"], ["running", "running"], ["queued", "queued"], ["succeeded", "succeeded"], ["all", "all"]]
      .map(([v, label]) => h("option", { value: v, selected: v === filter.status }, label)));
  const wfInput = h("input", { id: "f-workflow", name: "workflow_id", value: filter.workflow_id, placeholder: "workflow id (optional)", size: 38 });
  const form = h("form", { class: "filters", role: "search", onsubmit: (e) => {
    e.preventDefault();
    const next = new URLSearchParams();
    if (projectSel.value) next.set("project_id", projectSel.value);
    next.set("status", statusSel.value);
    if (wfInput.value.trim()) next.set("workflow_id", wfInput.value.trim());
    location.hash = `#/?${next}`;
  } },
  h("label", { for: "f-project" }, "Project"), projectSel,
  h("label", { for: "f-status" }, "Status"), statusSel,
  h("label", { for: "f-workflow" }, "Workflow"), wfInput,
  h("button", { type: "submit" }, "Apply"));

  const body = h("div", {}, h("p", { class: "muted" }, "Loading runs…"));
  main.replaceChildren(h("h1", {}, "Needs attention"), form, body);
  let page;
  try {
    page = (await api("GET", `/runs?${query}`)).data;
  } catch (err) {
    const box = h("div", { class: "problem", role: "alert" });
    showProblem(box, err);
    body.replaceChildren(box);
    return;
  }
  const rows = page.items.map((r) => h("tr", {},
    h("td", {}, statusBadge(r.status)),
    h("td", {}, h("a", { href: `#/runs/${r.id}`, class: "mono", "aria-label": `Open run ${r.id}` }, r.id)),
    h("td", { class: "mono" }, r.workflow_id.slice(0, 8), ` v${r.workflow_version}`),
    h("td", {}, r.trigger),
    h("td", {}, r.error?.step ? `${r.error.step}: ${r.error.type}` : r.error?.type || ""),
    h("td", {}, when(r.created_at))));
  const table = h("table", { class: "runs" },
    h("caption", {}, page.items.length ? "Newest first" : "Nothing needs attention."),
    h("thead", {}, h("tr", {}, ["Status", "Run", "Workflow", "Trigger", "Error", "Created"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows));
  const nav = h("nav", { class: "pager", "aria-label": "Pages" });
  if (q.get("cursor")) {
    const first = new URLSearchParams(params); first.delete("cursor");
    nav.append(h("a", { href: `#/?${first}` }, "First page"));
  }
  if (page.next_cursor) {
    const next = new URLSearchParams(params); next.set("cursor", page.next_cursor);
    nav.append(h("a", { href: `#/?${next}`, rel: "next" }, "Next page"));
  }
  body.replaceChildren(table, nav);
}

// ------------------------------------------------------------------ run page
async function runPage(runId) {
  await loadProjects();
  const { data: run } = await api("GET", `/runs/${runId}`);
  const { data: wf } = await api("GET", `/workflows/${run.workflow_id}/versions/${run.workflow_version}`)
    .catch(() => api("GET", `/workflows/${run.workflow_id}`));
  const steps = new Map(run.steps.map((s) => [s.key, s]));
  const editor = canEdit(run.project_id);
  const dagBox = h("div", { class: "dag-box", id: "dag" });
  // The plan shown while the resume dialog is open survives redraws caused by live events.
  let shownPlan = null;
  const redraw = (plan) => {
    if (plan !== undefined) shownPlan = plan;
    drawDag(dagBox, wf.definition, steps, shownPlan);
  };
  redraw();

  const actions = h("div", { class: "actions" });
  const actionError = h("div", { class: "problem", role: "alert", id: "action-error", hidden: true });
  if (editor) {
    const pauseSteps = run.steps.filter((s) => s.type === "pause" && s.status === "paused" && s.eligible_for_resume);
    if (run.status === "paused" && pauseSteps.length && !run.resolved_by) {
      for (const s of pauseSteps) {
        const reason = h("input", { id: `approve-reason-${s.key}`, maxlength: 500, placeholder: "reason (optional)" });
        actions.append(h("span", { class: "approve" },
          h("label", { for: `approve-reason-${s.key}` }, `Approve “${s.key}”: reason`), reason,
          h("button", { type: "button", class: "primary", id: `approve-${s.key}`, onclick: async (e) => {
            e.target.disabled = true;
            try {
              const { data } = await api("POST", `/runs/${runId}/resume`, {
                body: { from_step: s.key, ...(reason.value ? { reason: reason.value } : {}) },
                headers: { "Idempotency-Key": crypto.randomUUID() } });
              flash(`Approved: following run ${data.id}`);
              location.hash = `#/runs/${data.id}`;
            } catch (err) {
              showProblem(actionError, err);
              e.target.disabled = false;
            }
          } }, "Approve")));
      }
    }
    const resumable = (run.eligible_steps || []).length || (run.rerunnable_steps || []).length;
    if (resumable) {
      actions.append(h("button", { type: "button", id: "open-resume", onclick: () => openResume(run, steps, redraw) }, "Resume…"));
    }
    if (["queued", "running", "paused"].includes(run.status)) {
      actions.append(h("button", { type: "button", id: "cancel-run", onclick: async () => {
        try { await api("POST", `/runs/${runId}/cancel`); flash("Cancel requested"); route(); }
        catch (err) { showProblem(actionError, err); }
      } }, "Cancel run"));
    }
    if (["queued", "running"].includes(run.status)) {
      actions.append(h("button", { type: "button", id: "pause-run", onclick: async () => {
        try { await api("POST", `/runs/${runId}/pause`); flash("Pause requested"); route(); }
        catch (err) { showProblem(actionError, err); }
      } }, "Pause run"));
    }
  } else {
    actions.append(h("p", { class: "muted" }, `You are a ${roleIn(run.project_id) || "viewer"} of this project: you can read this run but not act on it.`));
  }

  const facts = h("dl", { class: "facts" },
    h("dt", {}, "Status"), h("dd", { id: "run-status" }, statusBadge(run.status)),
    h("dt", {}, "Run"), h("dd", { class: "mono" }, run.id),
    h("dt", {}, "Workflow"), h("dd", { class: "mono" }, `${run.workflow_id} (version ${run.workflow_version})`),
    h("dt", {}, "Trigger"), h("dd", {}, run.trigger + (run.resumed_from_step ? ` from “${run.resumed_from_step}”` : "")),
    h("dt", {}, "Parent"), h("dd", {}, run.parent_run_id ? runLink(run.parent_run_id) : "—"),
    h("dt", {}, "Resolved by"), h("dd", { id: "resolved-by" }, run.resolved_by ? runLink(run.resolved_by) : "—"),
    h("dt", {}, "Created"), h("dd", {}, when(run.created_at)),
    h("dt", {}, "Finished"), h("dd", {}, when(run.finished_at)),
    run.error ? [h("dt", {}, "Error"), h("dd", {}, json(run.error))] : null);

  const stepRows = h("tbody", {});
  const detail = h("section", { class: "card", "aria-labelledby": "step-detail-title", id: "step-detail", hidden: true });
  const renderSteps = () => stepRows.replaceChildren(...[...steps.values()].map((s) => h("tr", { "data-key": s.key },
    h("td", {}, h("button", { type: "button", class: "link", onclick: () => showStep(runId, s.key, detail) }, s.key)),
    h("td", {}, s.type), h("td", {}, statusBadge(s.status)), h("td", {}, s.attempt),
    h("td", {}, s.reused_from ? "reused" : s.override ? "manual output" : ""),
    h("td", {}, s.eligible_for_resume ? "yes" : ""))));
  renderSteps();

  const timeline = h("ol", { class: "timeline", id: "timeline", "aria-live": "polite" });
  const lineageBox = h("div", { id: "lineage" });
  main.replaceChildren(
    h("h1", {}, "Run ", h("span", { class: "mono" }, run.id.slice(0, 8)), " ", statusBadge(run.status)),
    actions, actionError, facts,
    h("section", { "aria-labelledby": "graph-title" }, h("h2", { id: "graph-title" }, "Graph"), dagBox),
    h("section", { "aria-labelledby": "steps-title" }, h("h2", { id: "steps-title" }, "Steps"),
      h("table", { class: "steps" },
        h("thead", {}, h("tr", {}, ["Step", "Type", "Status", "Attempt", "Origin", "Resumable"].map((t) => h("th", { scope: "col" }, t)))),
        stepRows)),
    detail,
    h("section", { "aria-labelledby": "timeline-title" }, h("h2", { id: "timeline-title" }, "Timeline"), timeline),
    h("section", { "aria-labelledby": "lineage-title" }, h("h2", { id: "lineage-title" }, "Lineage"), lineageBox));
  main.focus();
  renderLineage(runId, lineageBox);

  // Live: every event is added to the timeline; step events update the graph and the table.
  const signal = pageAbort.signal;
  let refresh = null;
  followEvents(`/runs/${runId}/events`, (ev) => {
    timeline.append(h("li", { "data-type": ev.type },
      h("time", { datetime: ev.at }, new Date(ev.at).toLocaleTimeString()), " ",
      h("span", { class: "ev" }, ev.type), ev.step_key ? ` ${ev.step_key}` : ""));
    if (ev.step_key || ev.type.startsWith("run_")) {
      clearTimeout(refresh);
      refresh = setTimeout(async () => {
        try {
          const { data } = await api("GET", `/runs/${runId}`);
          for (const s of data.steps) steps.set(s.key, s);
          redraw();
          renderSteps();
          document.getElementById("run-status")?.replaceChildren(statusBadge(data.status));
          if (data.status !== run.status && ["succeeded", "failed", "cancelled", "paused"].includes(data.status)) {
            main.querySelector("h1")?.replaceChildren("Run ", h("span", { class: "mono" }, run.id.slice(0, 8)), " ", statusBadge(data.status));
          }
        } catch { /* the next event tries again */ }
      }, 100);
    }
  }, { signal }).then(async () => {
    // The stream ended: the run settled. Draw the page again (actions, finish time, lineage) when
    // its status changed since it was drawn.
    if (signal.aborted) return;
    const { data } = await api("GET", `/runs/${runId}`);
    if (data.status !== run.status && !signal.aborted) await route();
  }).catch((err) => {
    if (!signal.aborted) timeline.append(h("li", { class: "problem" }, `Stream error: ${err.message}`));
  });
}

async function showStep(runId, key, box) {
  const { data: s } = await api("GET", `/runs/${runId}/steps/${encodeURIComponent(key)}`);
  box.replaceChildren(
    h("h2", { id: "step-detail-title" }, `Step “${s.key}” `, statusBadge(s.status)),
    h("dl", { class: "facts" },
      h("dt", {}, "Type"), h("dd", {}, s.type), h("dt", {}, "Attempt"), h("dd", {}, s.attempt),
      h("dt", {}, "Started"), h("dd", {}, when(s.started_at)), h("dt", {}, "Finished"), h("dd", {}, when(s.finished_at)),
      s.reused_from ? [h("dt", {}, "Reused from"), h("dd", { class: "mono" }, s.reused_from)] : null,
      s.override ? [h("dt", {}, "Manual output"), h("dd", {}, json(s.override))] : null),
    h("h3", {}, "Input"), json(s.input), h("h3", {}, "Output"), json(s.output),
    h("h3", {}, "Error"), json(s.error), h("h3", {}, "Attempts"), json(s.attempts));
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}

async function renderLineage(runId, box) {
  try {
    const { data } = await api("GET", `/runs/${runId}/lineage`);
    const byId = new Map(data.runs.map((r) => [r.id, r]));
    const item = (r) => h("li", {},
      r.id === runId ? h("strong", {}, h("span", { class: "mono" }, r.id.slice(0, 8)), " (this run)") : runLink(r.id), " ",
      statusBadge(r.status), r.resumed_from_step ? ` resumed from “${r.resumed_from_step}”` : ` ${r.trigger}`,
      r.children?.length ? h("ul", {}, r.children.map((c) => byId.get(c)).filter(Boolean).map(item)) : null);
    box.replaceChildren(h("ul", { class: "lineage" }, item(byId.get(data.root_run_id))));
  } catch (err) {
    const p = h("div", { class: "problem" });
    showProblem(p, err);
    box.replaceChildren(p);
  }
}

// ------------------------------------------------------------------ resume dialog
const dialog = document.getElementById("resume-dialog");
const form = document.getElementById("resume-form");
const stepSel = document.getElementById("resume-step");
const rerunBox = document.getElementById("resume-rerun");
const planBox = document.getElementById("resume-plan");
const errBox = document.getElementById("resume-error");
let current = null;

function parseJsonField(id, label) {
  const text = document.getElementById(id).value.trim();
  if (!text) return undefined;
  let value;
  try { value = JSON.parse(text); } catch { throw new Error(`${label} is not valid JSON.`); }
  if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error(`${label} must be a JSON object.`);
  return value;
}

function resumeBody() {
  const body = { from_step: stepSel.value };
  if (rerunBox.checked) body.rerun = true;
  const version = document.getElementById("resume-version").value;
  if (version !== "original") body.workflow_version = /^\d+$/.test(version) ? Number(version) : version;
  const input = parseJsonField("resume-input", "New input");
  if (input !== undefined) body.input = input;
  const outputs = parseJsonField("resume-outputs", "Manual outputs");
  if (outputs !== undefined) body.outputs = outputs;
  const reason = document.getElementById("resume-reason").value.trim();
  if (reason) body.reason = reason;
  return body;
}

function fillSteps() {
  const run = current.run;
  const keys = rerunBox.checked ? run.rerunnable_steps || [] : run.eligible_steps || [];
  stepSel.replaceChildren(...keys.map((k) => h("option", { value: k }, `${k} (${current.steps.get(k)?.status || "?"})`)));
  showPlan();
}

async function showPlan() {
  errBox.hidden = true;
  if (!stepSel.value) {
    planBox.replaceChildren(h("p", { class: "muted" }, "No step can be chosen."));
    current.redraw(null);
    return;
  }
  let plan;
  try {
    let body;
    try { body = resumeBody(); } catch { body = { from_step: stepSel.value, ...(rerunBox.checked ? { rerun: true } : {}) }; }
    try {
      plan = (await api("POST", `/runs/${current.run.id}/resume-plan`, { body })).data;
    } catch (err) {
      if (!(err instanceof ApiError) || ![404, 405].includes(err.status)) throw err;
      plan = (await api("GET", `/runs/${current.run.id}/resume-plan?from_step=${encodeURIComponent(stepSel.value)}`)).data;
    }
  } catch (err) {
    showProblem(errBox, err);
    planBox.replaceChildren();
    current.redraw(null);
    return;
  }
  const list = (label, keys, cls) => h("div", { class: `plan-${cls}` }, h("strong", {}, `${label} (${keys.length}): `),
    keys.length ? keys.join(", ") : "none");
  planBox.replaceChildren(list("Reused", plan.reuse, "reuse"), list("Re-run", plan.rerun, "rerun"),
    ...(plan.override?.length ? [list("Manual output", plan.override, "override")] : []));
  current.redraw(plan);
}

function openResume(run, steps, redraw) {
  current = { run, steps, redraw };
  form.reset();
  errBox.hidden = true;
  document.getElementById("resume-run").textContent = `Run ${run.id} (${run.status})`;
  rerunBox.disabled = !(run.rerunnable_steps || []).length;
  rerunBox.checked = !(run.eligible_steps || []).length && !rerunBox.disabled;
  const versionSel = document.getElementById("resume-version");
  versionSel.replaceChildren(h("option", { value: "original" }, `original (version ${run.workflow_version})`),
    h("option", { value: "latest" }, "latest"));
  fillSteps();
  dialog.showModal();
  stepSel.focus();
}

stepSel.addEventListener("change", showPlan);
rerunBox.addEventListener("change", fillSteps);
document.getElementById("resume-outputs").addEventListener("change", showPlan);
document.getElementById("resume-cancel").addEventListener("click", () => dialog.close());
dialog.addEventListener("close", () => current?.redraw(null));
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  errBox.hidden = true;
  let body;
  try { body = resumeBody(); } catch (err) { showProblem(errBox, err); return; }
  const submit = document.getElementById("resume-submit");
  submit.disabled = true;
  try {
    const { data } = await api("POST", `/runs/${current.run.id}/resume`, { body, headers: { "Idempotency-Key": crypto.randomUUID() } });
    dialog.close();
    flash(`Resumed: following run ${data.id}`);
    location.hash = `#/runs/${data.id}`;
  } catch (err) {
    showProblem(errBox, err);
  } finally {
    submit.disabled = false;
  }
});

// ------------------------------------------------------------------ bulk resume progress
async function bulkPage(bulkId) {
  await loadProjects();
  if (!bulkId) {
    const input = h("input", { id: "bulk-id", size: 38, required: true });
    main.replaceChildren(h("h1", {}, "Bulk resume"),
      h("p", {}, "Create bulk resumes through the API (POST /projects/{project_id}/bulk-resumes); follow one here."),
      h("form", { onsubmit: (e) => { e.preventDefault(); location.hash = `#/bulk/${input.value.trim()}`; } },
        h("label", { for: "bulk-id" }, "Bulk job id"), input, h("button", { type: "submit" }, "Open")));
    return;
  }
  const bar = h("progress", { id: "bulk-progress", max: 1, value: 0, "aria-label": "Bulk resume progress" });
  const counts = h("p", { id: "bulk-counts", "aria-live": "polite" });
  const items = h("tbody", {});
  const err = h("div", { class: "problem", role: "alert", hidden: true });
  main.replaceChildren(h("h1", {}, "Bulk resume ", h("span", { class: "mono" }, bulkId.slice(0, 8))), err, bar, counts,
    h("table", {}, h("thead", {}, h("tr", {}, ["Run", "Outcome", "New run", "Why"].map((t) => h("th", { scope: "col" }, t)))), items));
  const render = async () => {
    const { data: job } = await api("GET", `/bulk-resumes/${bulkId}`);
    const done = job.matched - (job.pending ?? 0);
    bar.max = Math.max(job.matched, 1);
    bar.value = done;
    counts.textContent = `${job.status}: ${done} of ${job.matched} done — accepted ${job.accepted}, skipped ${job.skipped}, rejected ${job.rejected}`;
    items.replaceChildren(...(job.items || []).map((it) => h("tr", {}, h("td", {}, runLink(it.run_id)), h("td", {}, it.outcome),
      h("td", {}, it.new_run_id ? runLink(it.new_run_id) : ""), h("td", {}, it.why || ""))));
    return job;
  };
  try {
    await render();
    const signal = pageAbort.signal;
    followEvents(`/bulk-resumes/${bulkId}/events`, () => { render().catch(() => {}); }, { signal }).catch(() => {});
  } catch (e) {
    showProblem(err, e);
  }
}

// ------------------------------------------------------------------ routing
async function route() {
  pageAbort.abort();
  pageAbort = new AbortController();
  const hash = location.hash || "#/";
  const tokenMatch = hash.match(/^#token=([^&]+)/);
  if (tokenMatch) {
    // A dev link: keep the token in this tab only and drop it from the address bar and history.
    setToken(decodeURIComponent(tokenMatch[1]));
    history.replaceState(null, "", location.pathname + "#/");
    projects = null;
  }
  const signedIn = Boolean(getToken());
  document.getElementById("signout").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? `Signed in as ${tokenSubject(getToken()) || "?"}` : "";
  if (!signedIn) return signIn();
  const path = (location.hash || "#/").slice(1);
  const [route_, query = ""] = path.split("?");
  try {
    let m;
    if ((m = route_.match(/^\/runs\/([0-9a-fA-F-]{36})$/))) await runPage(m[1]);
    else if ((m = route_.match(/^\/bulk(?:\/([0-9a-fA-F-]{36}))?$/))) await bulkPage(m[1]);
    else await listPage(query);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      setToken(null);
      projects = null;
      signIn();
      flash("Your token was not accepted; sign in again.");
      return;
    }
    const box = h("div", { class: "problem", role: "alert" });
    showProblem(box, err);
    main.replaceChildren(h("h1", {}, "Something went wrong"), box);
  }
}

document.getElementById("signout").addEventListener("click", () => {
  setToken(null);
  projects = null;
  location.hash = "#/";
  route();
});
window.addEventListener("hashchange", route);
route();

// A layered SVG drawing of a workflow's DAG: columns by depth (longest path from an entry step),
// each step a box with its key, type and status spelled out (never colour alone).

const SVG = "http://www.w3.org/2000/svg";
const W = 168, H = 58, GX = 64, GY = 22;

export const STATUS_ICON = {
  succeeded: "✓", failed: "✗", paused: "⏸", running: "▶", pending: "…", skipped: "↷", cancelled: "⊘", queued: "…",
};

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Nodes and edges of a stored definition, with `type` normalised the way the service reads it. */
export function graphOf(definition) {
  const nodes = (definition?.nodes || []).map((n) => ({ id: n.id, type: (n.data && n.data.type) || n.type || "?" }));
  const edges = (definition?.edges || []).map((e) => ({ source: e.source, target: e.target, handle: e.sourceHandle ?? null }));
  return { nodes, edges };
}

function layers(graph) {
  const parents = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const e of graph.edges) parents.get(e.target)?.push(e.source);
  const depth = new Map();
  const visit = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const d = Math.max(-1, ...(parents.get(id) || []).map((p) => visit(p, seen))) + 1;
    depth.set(id, d);
    return d;
  };
  graph.nodes.forEach((n) => visit(n.id));
  const cols = [];
  for (const n of graph.nodes) (cols[depth.get(n.id)] ||= []).push(n.id);
  return { cols, depth };
}

/**
 * Draws the DAG into `container`. `steps` maps key → step (status, attempt); `plan` (optional)
 * has `reuse`, `rerun` and `override` key lists, shown as labels and outlines.
 */
export function drawDag(container, definition, steps, plan = null) {
  const graph = graphOf(definition);
  const { cols } = layers(graph);
  const pos = new Map();
  cols.forEach((col, x) => col.forEach((id, y) => pos.set(id, { x: 16 + x * (W + GX), y: 16 + y * (H + GY) })));
  const width = 32 + cols.length * (W + GX) - GX;
  const height = 32 + Math.max(1, ...cols.map((c) => c.length)) * (H + GY) - GY;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
                          "aria-labelledby": "dag-title", class: "dag" });
  svg.append(el("title", { id: "dag-title" }, "Workflow graph: each box is a step with its status"));
  const defs = el("defs");
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(el("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
  defs.append(marker);
  svg.append(defs);
  for (const e of graph.edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
    svg.append(el("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: "edge", "marker-end": "url(#arrow)" }));
    if (e.handle) svg.append(el("text", { x: mx, y: (y1 + y2) / 2 - 4, class: "handle" }, e.handle));
  }
  const role = (key) => {
    if (!plan) return null;
    if (plan.override?.includes(key)) return "override";
    if (plan.rerun?.includes(key)) return "rerun";
    if (plan.reuse?.includes(key)) return "reuse";
    return null;
  };
  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const step = steps.get(n.id);
    const status = step?.status || "pending";
    const r = role(n.id);
    const g = el("g", { class: `node status-${status}${r ? " plan-" + r : ""}`, "data-key": n.id,
                        transform: `translate(${p.x},${p.y})` });
    g.append(el("title", {}, `${n.id} (${n.type}): ${status}${r ? ", " + r : ""}`));
    g.append(el("rect", { width: W, height: H, rx: 8 }));
    g.append(el("text", { x: 10, y: 20, class: "key" }, n.id.length > 20 ? n.id.slice(0, 19) + "…" : n.id));
    g.append(el("text", { x: 10, y: 37, class: "type" }, n.type));
    g.append(el("text", { x: 10, y: 52, class: "st" }, `${STATUS_ICON[status] || ""} ${status}${r ? " · " + r : ""}`));
    svg.append(g);
  }
  container.replaceChildren(svg);
}

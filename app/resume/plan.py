"""Which steps a resume may start from, and what it reuses or re-executes (DESIGN §5). Pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.workflows.definition import Dag

RESUMABLE_RUN = frozenset({"failed", "paused", "cancelled"})
RESUMABLE_STEP = frozenset({"failed", "paused", "cancelled"})
DONE = frozenset({"succeeded", "skipped"})
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
UNSETTLED = frozenset({"failed", "paused", "cancelled"})  # the statuses a run can be resolved in (§10.1)


def resolved_by(run) -> object | None:
    """The run that finished this run's work (§10.1), shown only while the run itself did not succeed."""
    return run["resolved_by"] if run["status"] in UNSETTLED else None


def eligible_steps(dag: Dag, run_status: str, statuses: dict[str, str]) -> list[str]:
    if run_status not in RESUMABLE_RUN:
        return []
    return [
        k
        for k in dag.order
        if statuses.get(k) in RESUMABLE_STEP and all(statuses.get(a) in DONE for a in dag.ancestors(k))
    ]


def rerunnable_steps(dag: Dag, run_status: str, resolved: bool, statuses: dict[str, str]) -> list[str]:
    """§10.2: with "rerun": true, any step of a finished (or resolved) run whose ancestors all succeeded or
    were skipped may be chosen; it and its descendants run again."""
    if run_status not in FINISHED and not (resolved and run_status in UNSETTLED):
        return []
    return [k for k in dag.order if all(statuses.get(a) in DONE for a in dag.ancestors(k))]


@dataclass(frozen=True)
class ResumePlan:
    from_step: str
    reuse: list[str]
    rerun: list[str]
    eligible_steps: list[str]
    override: list[str] = field(default_factory=list)
    rerunnable_steps: list[str] = field(default_factory=list)


def build_resume_plan(
    old_dag: Dag, new_dag: Dag, statuses: dict[str, str], from_step: str, eligible: list[str]
) -> ResumePlan:
    """Re-executed: the chosen step, its descendants, every step that did not succeed, and (with
    another version) every step whose config or incoming edges changed, with its descendants.
    Reused: every other succeeded step."""
    rerun: set[str] = set()
    if from_step in new_dag.steps:
        rerun |= {from_step} | new_dag.descendants(from_step)
    if new_dag is not old_dag:
        for key in new_dag.order:
            if key not in old_dag.steps or old_dag.lineage_signature(key) != new_dag.lineage_signature(key):
                rerun |= {key} | new_dag.descendants(key)
    reuse = []
    for key in new_dag.order:
        if key not in rerun and statuses.get(key) == "succeeded":
            reuse.append(key)
    reuse_set = set(reuse)
    return ResumePlan(from_step, reuse, [k for k in new_dag.order if k not in reuse_set], eligible)

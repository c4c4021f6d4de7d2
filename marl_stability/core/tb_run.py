"""What TensorBoard shows about a run as a whole: its HParams entry and its text summary.

HParams: every column has one type across runs, taken from the config schema, never from a run's value
(a float that is ``None`` in one run and ``0.003`` in another would otherwise be a string in one and a
number in the other, and TensorBoard's parallel-coordinates view draws the mismatched runs as NaN paths).
Optional and free-form values are strings (``"none"``, ``"0.003"``), booleans are booleans, plain numbers
are numbers. The first columns are the ones that tell runs apart: ``Arm``, ``Seed``, ``Fixes`` (the registry's
fixes the run uses), ``algo``, ``env.id``, then the fixes' keys. The metrics are the run's outcome (:data:`METRICS`), written as ``hparams/...`` scalars when
the run ends.
"""

from __future__ import annotations

import re
import typing
from typing import Any, Iterable, Literal, Optional

from pydantic import BaseModel

from marl_stability.config import RunConfig, flatten
from marl_stability.core.summary import RunSummary
from marl_stability.fmt import fmt_number

Kind = Literal["bool", "number", "string"]

# Detector alarms in HParams: ``hparams/<name>`` is 1 when the alarm fired and 0 when it did not; its step,
# ``hparams/<name>_step``, is written only where it fired (a "never" is no event, and a censored step posing as
# one read as "fired at the end" in the parallel-coordinates view). The on-policy ones only for on-policy runs.
DETECTOR_METRICS: tuple[tuple[str, str, bool], ...] = (  # (name, what fired, on-policy only)
    ("collapse", "the collapse alarm", False),
    ("explosion", "the gradient-explosion alarm", False),
    ("nonfinite", "a non-finite value", False),
    ("degradation", "the degradation alarm", False),
    ("entropy_collapse", "the entropy-collapse alarm", True),
    ("kl_spike", "the KL-spike alarm", True),
)
# (tag, description). TensorBoard's HParams view shows the first five metrics by default: the outcome, whether
# the run collapsed, the final action statistics a collapse is read from and the peak critic gradient.
METRICS: tuple[tuple[str, str], ...] = (
    ("hparams/final_return", "team return of the last evaluation"),
    ("hparams/collapse", "1: the collapse alarm fired, 0: it did not"),
    ("hparams/repeat_rate", "final evaluation: share of steps whose action did not change (mean over agents)"),
    ("hparams/saturation", "final evaluation: share of action components at a bound (mean over agents)"),
    ("hparams/max_grad_norm_critic", "peak pre-clip gradient norm of the critics"),
    ("hparams/best_return", "best team return of any evaluation"),
    ("hparams/sensitivity", "final evaluation: standardized |d action / d obs| (mean over agents)"),
    ("hparams/max_grad_norm_actor", "peak pre-clip gradient norm of the actors"),
    *((f"hparams/{n}", f"1: {what} fired, 0: it did not" + (" (on-policy runs)" if on else ""))
      for n, what, on in DETECTOR_METRICS if n != "collapse"),
    *((f"hparams/{n}_step", f"env step of {what} (only in runs where it fired)") for n, what, _ in DETECTOR_METRICS),
    ("eval/team_return", "team return of each evaluation (the last one is the final return)"),
)
FIRST_COLUMNS = ("algo", "env.id")  # after Arm, Seed and Fixes (hparams_of)
IDENTITY_COLUMNS = ("Arm", "Seed", "Fixes")


def _kind(annotation: Any) -> Kind:
    if annotation is bool:
        return "bool"
    if annotation in (int, float):
        return "number"
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        if all(isinstance(v, bool) for v in values):
            return "bool"
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return "number"
    return "string"  # str, Optional[...], unions, lists, free-form dicts


def schema_kinds(model: type[BaseModel] = RunConfig, prefix: str = "") -> dict[str, Kind]:
    """The HParams type of every dotted config key, from the schema alone."""
    out: dict[str, Kind] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(schema_kinds(ann, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = _kind(ann)
    return out


def _typed(value: Any, kind: Kind) -> Any:
    if kind == "bool":
        return bool(value)
    if kind == "number":
        return float(value)
    return "none" if value is None else str(value)


def fixes_in_effect(cfg: RunConfig, on_policy: bool = False) -> str:
    """The ids of the registry's fixes this config uses (:func:`marl_stability.fixes.registry.in_use`)."""
    from marl_stability.fixes.registry import in_use

    return ", ".join(f.id for f in in_use(cfg, on_policy)) or "none"


def hparams_of(cfg: RunConfig, labels: Optional[dict[str, str]] = None, on_policy: bool = False) -> dict[str, Any]:
    """Column name -> value (bool, float or str, by the schema). First the columns that tell runs apart, with
    capitalized names so that TensorBoard (which sorts columns by name, code point order) shows them first:
    ``Arm`` (the ``arm`` label), ``Seed`` and ``Fixes`` (:func:`fixes_in_effect`); then every config key."""
    kinds = schema_kinds()
    flat = flatten(cfg.to_dict())
    labels = dict(labels or {})
    out: dict[str, Any] = {"Arm": str(labels.pop("arm", "")), "Seed": float(cfg.seed),
                           "Fixes": fixes_in_effect(cfg, on_policy)}
    out.update({k: str(v) for k, v in labels.items()})
    fixes = [k for k in flat if k.startswith(("fixes.", "actor.", "critic.", "actor_optim.", "critic_optim."))]
    rest = set(flat) - set(fixes) - set(FIRST_COLUMNS) - {"seed"}  # seed: the Seed column
    order = [k for k in FIRST_COLUMNS if k in flat] + fixes + sorted(rest)
    for key in order:
        out[key] = _typed(flat[key], kinds.get(key, "string"))
    return out


def metric_values(summary: RunSummary) -> dict[str, float]:
    """The ``hparams/...`` scalars of a finished run: NaN where the run has no such number; a detector's step
    only where it fired."""
    nan = float("nan")

    def num(x: Optional[float]) -> float:
        return nan if x is None else float(x)

    out = {
        "hparams/final_return": num(summary.final_return),
        "hparams/best_return": num(summary.best_return),
        "hparams/max_grad_norm_critic": num(summary.grad_peak("critic")),
        "hparams/max_grad_norm_actor": num(summary.grad_peak("actor")),
        "hparams/repeat_rate": num(summary.repeated_action_rate),
        "hparams/saturation": num(summary.saturation_rate),
        "hparams/sensitivity": num(summary.action_sensitivity),
    }
    for name, _, on_policy_only in DETECTOR_METRICS:
        if on_policy_only and not summary.on_policy:
            continue
        step = getattr(summary, f"{name}_step")
        out[f"hparams/{name}"] = float(step is not None)
        if step is not None:
            out[f"hparams/{name}_step"] = float(step)
    return out


def hparams_summaries(hparams: dict[str, Any], metrics: Iterable[tuple[str, str]],
                      varying: Iterable[str] = ()) -> list[Any]:
    """The HParams plugin's experiment and session-start summaries for one run's event file.

    TensorBoard takes the experiment (the columns) from one run's summary and orders the columns by
    ``differs`` first, then by name, showing the first five by default. A sweep knows which keys vary across
    its arms (``varying``: arm, seed and the keys its arms set differently) and marks them, so the default
    view shows what tells the runs apart; every trial of a sweep writes the same experiment."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    types = {bool: api_pb2.DATA_TYPE_BOOL, float: api_pb2.DATA_TYPE_FLOAT64, str: api_pb2.DATA_TYPE_STRING}
    renamed = {"arm": "Arm", "seed": "Seed"}
    wanted = {renamed.get(k, k) for k in varying} | set(IDENTITY_COLUMNS)
    start = plugin_data_pb2.SessionStartInfo()
    infos = []
    for name, value in hparams.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
        elif isinstance(value, float):
            start.hparams[name].number_value = value
        else:
            start.hparams[name].string_value = value
        infos.append(api_pb2.HParamInfo(name=name, type=types[type(value)], differs=name in wanted))
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), description=text) for tag, text in metrics])

    def value(tag: str, data: Any) -> Any:
        meta = metadata.create_summary_metadata(data)
        return Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=metadata.NULL_TENSOR)])

    return [value(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
            value(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start))]


# The run's summary in the Text tab: a capitalized tag, so that it comes before the lower-case detector messages
# (TensorBoard sorts text tags by code point and expands the first two).
SUMMARY_TAG = "Summary"
_MESSAGE = re.compile(r"^(?P<what>[^\[]+?) \[(?P<name>[^\]]+)\] (?P<rest>.*)$")


def grouped_messages(messages: Iterable[str], agents: Iterable[str]) -> list[str]:
    """One line per detector (``explosion/critic``, ``collapse``, ...) naming the agents it fired for, with the
    first message's details; messages of another form are kept as they are."""
    agent_set = set(agents)
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    lines: list[str] = []
    for m in messages:
        match = _MESSAGE.match(m)
        if match is None:
            lines.append(m)
            continue
        head, _, last = match["name"].rpartition("/")
        key = (match["what"], head) if head and last in agent_set else (match["what"], match["name"])
        groups.setdefault(key, []).append((last if head and last in agent_set else "", match["rest"]))
    for (what, name), hits in groups.items():
        who = [a for a, _ in hits if a]
        for_whom = f" for {', '.join(who)}" if who else ""
        lines.append(f"**{what}** [{name}]{for_whom}; first: {hits[0][1]}")
    return lines


def summary_text(summary: RunSummary, stop_reason: str = "") -> str:
    """The run's summary text (markdown, rendered by TensorBoard's Text tab): how it ended, returns, detector
    steps, peak gradient norms; each detector that fired, once, with the agents it fired for; which fixes acted;
    the final action statistics per agent -- rounded, as in ``summary.json``."""
    never = "did not fire"
    why = f" ({stop_reason})" if stop_reason else ""
    rows = [
        ("status", f"{summary.status}{why}"),
        *([("heals (train.heal; the alarms below count from the last one)",
            ", ".join(f"{h['trigger'].replace('_', ' ')} at env step {h['alarm_step']} -> {h.get('fix') or 'not healed'}"
                      for h in summary.healing))] if summary.healing else []),
        ("env steps / updates", f"{summary.env_steps} / {summary.updates}"),
        ("final / best team return", f"{fmt_number(summary.final_return)} / {fmt_number(summary.best_return)}"),
        ("collapse alarm", never if summary.collapse_step is None else f"env step {summary.collapse_step}"),
        ("explosion alarm", never if summary.explosion_step is None else f"env step {summary.explosion_step}"),
        ("degradation alarm", never if summary.degradation_step is None else f"env step {summary.degradation_step}"),
        ("first non-finite value", "none" if summary.nonfinite_step is None else f"env step {summary.nonfinite_step}"),
        ("peak grad norm (critic / actor)",
         f"{fmt_number(summary.grad_peak('critic'), '.3g')} / {fmt_number(summary.grad_peak('actor'), '.3g')}"),
    ]
    lines = ["| outcome | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    # what a reader needs first comes first (TensorBoard's text card scrolls): what fired, what acted, then agents
    if summary.detector_messages:
        lines += ["", "Detectors that fired:", ""]
        lines += [f"- {m}" for m in grouped_messages(summary.detector_messages, summary.agents)]
    if summary.healing:
        lines += ["", "Heals (train.heal):", ""] + [f"- {heal_line(r)}; outcome: {r.get('outcome')}" for r in summary.healing]
    if summary.fix_engagement:
        lines += ["", "| fix in effect | acted | how we know |", "|---|---|---|"]
        acted = {True: "yes", False: "**no**", None: "by construction"}
        for fix, e in summary.fix_engagement.items():
            lines.append(f"| {fix} | {acted[e.get('engaged')]} | {e.get('how', '')} |")
    if summary.action_stats:
        lines += ["", "| agent, final evaluation | repeat rate | saturation | same action across states | sensitivity |",
                  "|---|---|---|---|---|"]
        for agent, st in summary.action_stats.items():
            lines.append(f"| {agent} | {fmt_number(st.repeat_rate)} | {fmt_number(st.saturation)} | "
                         f"{fmt_number(st.batch_same_action)} | {fmt_number(st.sensitivity, '.3g')} |")
    return "\n".join(lines)


# The Story group (written by the ``story`` hook, marl_stability.hooks.builtin.StoryHook): the first group
# TensorBoard's Time Series shows expanded when opened plainly -- groups sort by code point, so a capitalized name
# comes before every lower-case one; cards sort the same way inside a group, hence the numbers. The team return
# first, then each of the first three agents' repeat rate, saturation and pre-clip critic gradient norm: at most
# 1 + 3 x 3 = 10 cards, under TensorBoard's 12 per page.
STORY_GROUP = "Story"
STORY_AGENTS = 3


# The cards a failure story is read from, pinned at the top of Time Series by the deep link below.
STORY_CARDS = ("eval/team_return", "eval/repeat_rate/{agent}", "eval/saturation/{agent}", "grad_norm/critic/{agent}",
               "grad_norm/actor/{agent}", "policy/preact_max_abs_batch/{agent}")


def tensorboard_link(agent: str, port: int = 6006) -> str:
    """A TensorBoard URL (Time Series) that colours runs by arm (runs are named ``<arm>/seed_<n>``: one colour
    group per arm, via TensorBoard's ``runColorGroup=regex:`` deep link) and pins the story cards of ``agent``."""
    import json
    import urllib.parse

    pinned = [{"plugin": "scalars", "tag": t.format(agent=agent)} for t in STORY_CARDS]
    cards = json.dumps(pinned, separators=(",", ":"))
    query = "&".join(f"{k}={urllib.parse.quote(v, safe=':/,[]{}^()')}" for k, v in
                     (("runColorGroup", "regex:^([^/]+)/"), ("pinnedCards", cards)))
    return f"http://localhost:{port}/?{query}#timeseries"


# TensorBoard's y-range ignores outliers by default (its 5th to 95th percentile of all points on a card, padded
# by 5%): the best evaluations of the arm that learns sit above it. Said wherever a report points to TensorBoard.
OUTLIER_SETTING = 'untick Settings > "Ignore outliers in chart scaling"'
OUTLIER_NOTE = ("TensorBoard scales each chart's y-axis to the 5th-95th percentile of its points by default, which "
                f"cuts off the best returns of the arm that learns: {OUTLIER_SETTING} (Time Series; the same box in "
                "Scalars and Custom Scalars) to see every point.")


def heal_line(r: dict[str, Any]) -> str:
    """One heal record of ``summary.json`` in words (the heal's TensorBoard text, the Summary text, doctor)."""
    if not r.get("fix"):
        return f"heal {r['attempt']}: {r['trigger'].replace('_', ' ')} at env step {r['alarm_step']}: {r['outcome']}"
    return (f"heal {r['attempt']}: {r['trigger'].replace('_', ' ')} at env step {r['alarm_step']} ({r['message']}); "
            f"road: {r['road']}; rolled back to env step {r['rolled_back_to']} (onset {r['onset_step']}, "
            f"{r['env_steps_lost']} env steps lost{'; ' + r['data'] if r.get('data') else ''}); applied {r['fix']} "
            f"({' '.join('--set ' + s for s in r['settings'])})")

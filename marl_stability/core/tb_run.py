"""What TensorBoard shows about a run as a whole: its HParams entry and its text summary.

HParams: every column has one type across runs, taken from the config schema, never from a run's value
(a float that is ``None`` in one run and ``0.003`` in another would otherwise be a string in one and a
number in the other, and TensorBoard's parallel-coordinates view draws the mismatched runs as NaN paths).
Optional and free-form values are strings (``"none"``, ``"0.003"``), booleans are booleans, plain numbers
are numbers. The first columns are the ones that tell runs apart: ``arm``, ``seed``, ``algo``, ``env.id``,
then the fixes. The metrics are the run's outcome (:data:`METRICS`), written as ``hparams/...`` scalars when
the run ends.
"""

from __future__ import annotations

import typing
from typing import Any, Iterable, Literal, Optional

from pydantic import BaseModel

from marl_stability.config import RunConfig, flatten
from marl_stability.core.summary import RunSummary
from marl_stability.fmt import fmt_number

Kind = Literal["bool", "number", "string"]

# (tag, description). Detector steps of a run whose detector never fired are the run's last env step: "no
# alarm by the end" sorts after every alarm and keeps the run in the parallel-coordinates view.
METRICS: tuple[tuple[str, str], ...] = (
    ("eval/team_return", "team return of each evaluation (the last one is the final return)"),
    ("hparams/final_return", "team return of the last evaluation"),
    ("hparams/best_return", "best team return of any evaluation"),
    ("hparams/collapse_step", "env step of the collapse alarm (the run's last step when it never fired)"),
    ("hparams/explosion_step", "env step of the gradient-explosion alarm (last step when it never fired)"),
    ("hparams/nonfinite_step", "env step of the first non-finite value (last step when there was none)"),
    ("hparams/max_grad_norm_critic", "peak pre-clip gradient norm of the critics"),
    ("hparams/max_grad_norm_actor", "peak pre-clip gradient norm of the actors"),
    ("hparams/repeat_rate", "final evaluation: share of steps whose action did not change (mean over agents)"),
    ("hparams/saturation", "final evaluation: share of action components at a bound (mean over agents)"),
    ("hparams/sensitivity", "final evaluation: standardized |d action / d obs| (mean over agents)"),
)
FIRST_COLUMNS = ("arm", "seed", "algo", "env.id")


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


def hparams_of(cfg: RunConfig, labels: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Column name -> value (bool, float or str, by the schema), labels (``arm``) first."""
    kinds = schema_kinds()
    flat = flatten(cfg.to_dict())
    fixes = [k for k in flat if k.startswith(("fixes.", "actor.", "critic.", "actor_optim.", "critic_optim."))]
    order = [k for k in FIRST_COLUMNS if k in flat] + fixes + sorted(set(flat) - set(fixes) - set(FIRST_COLUMNS))
    out: dict[str, Any] = {k: str(v) for k, v in (labels or {}).items()}
    for key in order:
        out[key] = _typed(flat[key], kinds.get(key, "string"))
    return out


def metric_values(summary: RunSummary) -> dict[str, float]:
    """The ``hparams/...`` scalars of a finished run (NaN where the run has no such number)."""
    nan = float("nan")

    def num(x: Optional[float]) -> float:
        return nan if x is None else float(x)

    def step(x: Optional[int]) -> float:
        return float(summary.env_steps if x is None else x)

    return {
        "hparams/final_return": num(summary.final_return),
        "hparams/best_return": num(summary.best_return),
        "hparams/collapse_step": step(summary.collapse_step),
        "hparams/explosion_step": step(summary.explosion_step),
        "hparams/nonfinite_step": step(summary.nonfinite_step),
        "hparams/max_grad_norm_critic": num(summary.grad_peak("critic")),
        "hparams/max_grad_norm_actor": num(summary.grad_peak("actor")),
        "hparams/repeat_rate": num(summary.repeated_action_rate),
        "hparams/saturation": num(summary.saturation_rate),
        "hparams/sensitivity": num(summary.action_sensitivity),
    }


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
    wanted = set(varying)
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


def summary_text(summary: RunSummary, stop_reason: str = "") -> str:
    """The run's ``summary`` text (markdown, rendered by TensorBoard's Text tab): how it ended, returns,
    detector steps, peak gradient norms and the final action statistics, rounded, as in ``summary.json``."""
    never = "did not fire"
    why = f" ({stop_reason})" if stop_reason else ""
    rows = [
        ("status", f"{summary.status}{why}"),
        ("env steps / updates", f"{summary.env_steps} / {summary.updates}"),
        ("final / best team return", f"{fmt_number(summary.final_return)} / {fmt_number(summary.best_return)}"),
        ("collapse alarm", never if summary.collapse_step is None else f"env step {summary.collapse_step}"),
        ("explosion alarm", never if summary.explosion_step is None else f"env step {summary.explosion_step}"),
        ("first non-finite value", "none" if summary.nonfinite_step is None else f"env step {summary.nonfinite_step}"),
        ("peak grad norm (critic / actor)",
         f"{fmt_number(summary.grad_peak('critic'), '.3g')} / {fmt_number(summary.grad_peak('actor'), '.3g')}"),
    ]
    lines = ["| run | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    if summary.action_stats:
        lines += ["", "final evaluation | repeat rate | saturation | same action | sensitivity",
                  "---|---|---|---|---"]
        for agent, st in summary.action_stats.items():
            lines.append(f"{agent} | {fmt_number(st.repeat_rate)} | {fmt_number(st.saturation)} | "
                         f"{fmt_number(st.batch_same_action)} | {fmt_number(st.sensitivity, '.3g')}")
    if summary.detector_messages:
        lines += [""] + [f"- {m}" for m in summary.detector_messages]
    return "\n".join(lines)


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

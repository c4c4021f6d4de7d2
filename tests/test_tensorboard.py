"""What TensorBoard shows: HParams types and metrics, the first screen of Time Series, the summary text, the
deep link. (What a browser renders is checked by ``python -m marl_stability.bench.tb_screenshot``; these tests
check the event files it renders from.)"""

from __future__ import annotations

import json
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

from marl_stability.config import RunConfig, flatten, load_config
from marl_stability.core.summary import AgentActionStats, RunSummary
from marl_stability.core.tb_run import (
    METRICS,
    hparams_of,
    hparams_summaries,
    metric_values,
    schema_kinds,
    summary_text,
    tensorboard_link,
)

# TensorBoard 2.21's Time Series sorts tag groups (the part before the first "/") alphabetically and opens
# only the first two expanded (seen in headless Chromium: tb_screenshot prints each group's state).
EXPANDED_GROUPS = 2
FIRST_SCREEN = ("Story", "eval")
FIRST_SCREEN_MAX_CARDS = 30  # 3 agents: 10 story cards + 19 eval scalars
PAGE_CARDS = 12  # TensorBoard pages a group at 12 cards


def test_schema_kinds_follow_the_schema_not_the_values() -> None:
    kinds = schema_kinds()
    assert kinds["fixes.obs_norm.enabled"] == "bool"
    assert kinds["actor_optim.lr"] == "number"
    assert kinds["seed"] == "number"
    assert kinds["actor.last_layer_init"] == "string"  # Optional[float]: "none" or "0.003" in every run
    assert kinds["actor.output"] == "string"


def test_hparam_columns_have_one_type_across_runs() -> None:
    """The failure arm (no small init: None) and the fixed arm (0.003) give the same column types; booleans
    are booleans (bool is an int in Python: a naive writer makes them numbers)."""
    failure = load_config("experiments/repeated_action_failure.yaml")
    fixed = load_config("experiments/repeated_action_fixed.yaml")
    a, b = hparams_of(failure, {"arm": "failure"}), hparams_of(fixed, {"arm": "fixed"})
    assert a.keys() == b.keys()
    assert {k: type(v) for k, v in a.items()} == {k: type(v) for k, v in b.items()}
    assert failure.actor.last_layer_init is None and fixed.actor.last_layer_init is not None
    assert a["actor.last_layer_init"] == "none" and b["actor.last_layer_init"] == str(fixed.actor.last_layer_init)
    assert type(a["fixes.obs_norm.enabled"]) is bool
    assert list(a)[:5] == ["Arm", "Seed", "Fixes", "algo", "env.id"]
    assert set(flatten(failure.to_dict())) - {"seed"} <= set(a) and a["Seed"] == float(failure.seed)
    # the fixes each arm uses, by registry id: the fixed arm's changes in one column
    assert a["Fixes"] == "adam" and set(b["Fixes"].split(", ")) == {
        "grad_clip", "lower_lr", "reward_scale", "small_init", "tanh_scaled", "obs_norm", "adam"}


def test_hparams_summary_declares_the_types() -> None:
    from tensorboard.plugins.hparams import api_pb2, metadata

    hp = hparams_of(RunConfig(), {"arm": "x"})
    exp_summary, start_summary = hparams_summaries(hp, METRICS)
    exp = metadata.parse_experiment_plugin_data(exp_summary.value[0].metadata.plugin_data.content)
    types = {i.name: i.type for i in exp.hparam_infos}
    assert types["fixes.obs_norm.enabled"] == api_pb2.DATA_TYPE_BOOL
    assert types["actor_optim.lr"] == api_pb2.DATA_TYPE_FLOAT64
    assert types["actor.last_layer_init"] == api_pb2.DATA_TYPE_STRING
    assert [m.name.tag for m in exp.metric_infos] == [t for t, _ in METRICS]
    start = metadata.parse_session_start_info_plugin_data(start_summary.value[0].metadata.plugin_data.content)
    assert start.hparams["fixes.obs_norm.enabled"].WhichOneof("kind") == "bool_value"
    assert start.hparams["Arm"].string_value == "x"
    differs = {i.name for i in exp.hparam_infos if i.differs}
    assert {"Arm", "Seed", "Fixes"} <= differs


def _summary(**kw: object) -> RunSummary:
    base = dict(status="completed", env_steps=150000, updates=5000, final_return=-72.00183748527441,
                best_return=-55.123456, max_grad_norm={"critic": 12.3456789, "actor": 0.0123456},
                collapse_step=30000, repeated_action_rate=1.0, saturation_rate=0.98, action_sensitivity=0.0,
                action_stats={"agent_0": AgentActionStats(repeat_rate=1.0, saturation=0.98, batch_same_action=1.0,
                                                          sensitivity=0.0)},
                detector_messages=["collapse: agent_0 repeats its action"])
    base.update(kw)
    return RunSummary(**base)


def test_metric_values_say_fired_and_write_a_step_only_where_it_fired() -> None:
    v = metric_values(_summary())
    assert v["hparams/collapse"] == 1.0 and v["hparams/collapse_step"] == 30000.0
    assert v["hparams/explosion"] == 0.0 and "hparams/explosion_step" not in v  # never fired: no censored step
    assert "hparams/entropy_collapse" not in v  # an on-policy detector in an off-policy run: not a "0"
    assert set(v) <= {t for t, _ in METRICS}
    assert v["hparams/final_return"] == pytest.approx(-72.00183748527441)
    assert v["hparams/max_grad_norm_critic"] == pytest.approx(12.3456789)
    # the five metrics TensorBoard's HParams view shows by default
    assert [t for t, _ in METRICS[:5]] == ["hparams/final_return", "hparams/collapse", "hparams/repeat_rate",
                                           "hparams/saturation", "hparams/max_grad_norm_critic"]
    on = metric_values(_summary(on_policy=True, kl_spike_step=4000))
    assert on["hparams/entropy_collapse"] == 0.0 and on["hparams/kl_spike"] == 1.0 and on["hparams/kl_spike_step"] == 4000


def test_summary_text_is_rounded_and_complete() -> None:
    text = summary_text(_summary(), "")
    assert "-72.00" in text and "-72.0018" not in text
    assert "env step 30000" in text and "did not fire" in text
    assert "| agent_0 | 1.00 | 0.98 | 1.00 | 0 |" in text
    assert "collapse: agent_0 repeats its action" in text
    assert text.startswith("| outcome | value |")
    assert "status | diverged (critic loss NaN)" in summary_text(_summary(status="diverged"), "critic loss NaN")


def test_deep_link_colours_by_arm_and_pins_the_story() -> None:
    url = tensorboard_link("agent_0", port=6123)
    parsed = urllib.parse.urlparse(url)
    q = dict(urllib.parse.parse_qsl(parsed.query))
    assert parsed.netloc == "localhost:6123" and parsed.fragment == "timeseries"
    assert q["runColorGroup"] == "regex:^([^/]+)/"
    pinned = json.loads(q["pinnedCards"])
    assert {"plugin": "scalars", "tag": "eval/team_return"} in pinned
    assert all(p["plugin"] == "scalars" for p in pinned)


def _groups(tags: set[str]) -> Counter:
    return Counter(t.split("/", 1)[0] for t in tags)


def test_first_screen_tells_the_story(tb_run_tags: tuple[set[str], set[str]]) -> None:
    """Of a real run's tags (MADDPG, MATD3, MAPPO): the groups TensorBoard opens expanded are the story (returns
    and action statistics, then gradient norms), with few cards; per-layer statistics sit in collapsed groups
    (gradients and weights under layers/, dormant units per hidden layer under plasticity/)."""
    scalars, histograms = tb_run_tags
    groups = _groups(scalars | histograms)
    order = sorted(groups)
    assert tuple(order[:EXPANDED_GROUPS]) == FIRST_SCREEN, order
    assert sum(groups[g] for g in FIRST_SCREEN) <= FIRST_SCREEN_MAX_CARDS, groups
    # the first group fits one page: the team return first, then each agent's repeat rate, saturation, critic norm
    story = sorted(t for t in scalars if t.startswith("Story/"))
    assert len(story) <= PAGE_CARDS and story[0] == "Story/0_team_return", story
    assert [t.split("/")[1] for t in story[1:4]] == ["1_repeat_rate"] * 3, story
    assert any(t.startswith("Story/3_critic_grad_norm/") for t in story), story
    assert not any(t.startswith(FIRST_SCREEN) for t in histograms)
    per_layer = {t for t in scalars if t.count("/") >= 4 or "_layer" in t}
    assert per_layer and all(t.startswith(("layers/", "plasticity/")) for t in per_layer)
    assert any(t.startswith("layers/") for t in per_layer) and any(t.startswith("plasticity/") for t in per_layer)
    assert len(groups) <= 16, groups  # 18 before the regrouping (MADDPG); MAPPO adds value/, every run plasticity/ and Story/
    assert {f"hparams/{k}" for k in ("final_return", "collapse", "saturation")} <= scalars


TINY_RUNS = {
    "maddpg": ("experiments/repeated_action_failure.yaml",
               ["maddpg.warmup_steps=1000", "maddpg.batch_size=128"]),
    "matd3": ("experiments/repeated_action_failure.yaml",
              ["algo=matd3", "maddpg.warmup_steps=1000", "maddpg.batch_size=128"]),
    "mappo": ("experiments/mappo_spread.yaml", ["env.num_envs=8", "ppo.rollout_steps=25", "ppo.epochs=2"]),
}


_RUN_DIRS: dict[str, Path] = {}


@pytest.fixture(scope="module", params=sorted(TINY_RUNS))
def tb_run_tags(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from marl_stability.training.trainer import Trainer

    preset, extra = TINY_RUNS[request.param]
    cfg = load_config(preset, extra + ["train.steps=3000", "train.eval_every=1500", "train.eval_episodes=2",
                                       "train.log_every=1", "train.layer_stats_every=1", "train.histogram_every=1"])
    run = tmp_path_factory.mktemp("tb") / request.param
    Trainer(cfg, run, quiet=True).run()
    _RUN_DIRS[request.param] = run
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags["scalars"]), set(tags["histograms"])


@pytest.mark.parametrize("old,new", [
    ("grad_norm_layer/critic/agent_0/mlp.out.weight", "layers/grad_norm/critic/agent_0/mlp.out.weight"),
    ("grad_norm_postclip/actor/agent_1", "optim/grad_norm_postclip/actor/agent_1"),
    ("update_ratio/critic/agent_0", "optim/update_ratio/critic/agent_0"),
    ("eval/actions/agent_0/dim2", "hist/eval_actions/agent_0/dim2"),
    ("critic/q_initial/agent_0", "q/initial/agent_0"),
    ("critic/td_error_max/agent_2", "q/td_error_max/agent_2"),
    ("actor/preact_max_abs_batch/agent_0", "policy/preact_max_abs_batch/agent_0"),
    ("episode/team_return", "rollout/team_return"),
    ("grad_norm/critic/agent_0", "grad_norm/critic/agent_0"),  # current tags are left alone
    ("optim/update_ratio/critic/agent_0", "optim/update_ratio/critic/agent_0"),
    ("hist/eval_actions/agent_0/dim0", "hist/eval_actions/agent_0/dim0"),
])
def test_runs_written_before_the_regrouping_still_read(old: str, new: str) -> None:
    from marl_stability.tags import current_tag

    assert current_tag(old) == new


def test_screenshot_parser_reads_each_group_on_its_own():
    """A Time Series group whose toolbar has no card count must not take the next group's (perf/plasticity)."""
    from marl_stability.bench.tb_screenshot import timeseries_groups

    def group(name: str, count: str, icon: str) -> str:
        return (f'<span class="group-title" title="{name}">{name}</span>{count}'
                f'<mat-icon svgicon="{icon}_24px"></mat-icon>')
    dom = (group("eval", '<span class="group-card-count">19 cards</span>', "expand_less")
           + group("perf", "", "expand_more")
           + group("plasticity", '<span class="group-card-count">80 cards</span>', "expand_more"))
    assert timeseries_groups(dom) == [{"group": "eval", "cards": 19, "expanded": True},
                                      {"group": "perf", "cards": None, "expanded": False},
                                      {"group": "plasticity", "cards": 80, "expanded": False}]


def test_detector_messages_are_grouped_one_line_per_detector() -> None:
    from marl_stability.core.tb_run import grouped_messages

    msgs = [f"action collapse [collapse/agent_{i}] since step {30000 + i}: repeat 1 >= 0.9" for i in range(3)]
    msgs += ["gradient explosion [explosion/critic/agent_1] at step 500: norm 3e4", "non-finite values [nonfinite] at step 9"]
    lines = grouped_messages(msgs, ["agent_0", "agent_1", "agent_2"])
    assert lines == ["**action collapse** [collapse] for agent_0, agent_1, agent_2; first: since step 30000: repeat 1 >= 0.9",
                     "**gradient explosion** [explosion/critic] for agent_1; first: at step 500: norm 3e4",
                     "**non-finite values** [nonfinite]; first: at step 9"]


def test_custom_scalars_show_one_agent_per_run(tb_run_tags: tuple[set[str], set[str]]) -> None:
    """Custom Scalars (TensorBoard matches each chart's regexes with a search): per-agent charts hold the first
    agent's line (or a shared network's) only, so a chart has one line per run, not one per run and agent."""
    import re

    from marl_stability.agents import ALGORITHMS
    from marl_stability.hooks.control import dashboard

    scalars, _ = tb_run_tags
    prefixes = tuple(p for cls in ALGORITHMS.values() for p in cls.stat_prefixes)
    layout = dashboard(prefixes, None, focus="agent_0")
    drawn = 0
    for charts in layout.values():
        for name, (_, patterns) in charts.items():
            lines = {t for t in scalars for p in patterns if re.search(p, t)}
            assert not any(t.endswith(("/agent_1", "/agent_2")) for t in lines), (name, sorted(lines))
            drawn += bool(lines)
    assert drawn >= 12
    assert {t for t in scalars for p in layout["Gradients"]["critic grad norm (pre-clip)"][1] if re.search(p, t)} <= {
        "grad_norm/critic/agent_0", "grad_norm/critic/shared"}


def test_story_cards_are_the_numbers_of_their_sources(tb_run_tags: tuple[set[str], set[str]]) -> None:
    from scalar_files import series_of_file

    for run in _RUN_DIRS.values():  # the runs built so far (MADDPG, MAPPO, MATD3)
        series = series_of_file(run)
        assert series["Story/0_team_return"] == series["eval/team_return"]
        agent = "agent_0"
        assert series[f"Story/1_repeat_rate/{agent}"] == series[f"eval/repeat_rate/{agent}"]
        assert series[f"Story/2_saturation/{agent}"] == series[f"eval/saturation/{agent}"]
        owner = agent if f"grad_norm/critic/{agent}" in series else "shared"
        assert series[f"Story/3_critic_grad_norm/{owner}"] == series[f"grad_norm/critic/{owner}"]
    assert _RUN_DIRS


def test_screenshot_checks_want_the_story_group_first_and_on_one_page() -> None:
    from marl_stability.bench.tb_screenshot import _checks

    def report(groups: list[tuple[str, int, bool]]) -> dict:
        return {"timeseries_groups": [{"group": g, "cards": n, "expanded": e} for g, n, e in groups],
                "run_colours": {}, "runs": 1, "hparams": {"sessions": 1, "columns": {"Arm": "string"}, "missing": {}}}

    good = dict((what.split()[0], ok) for ok, what in _checks(report([("Story", 10, True), ("eval", 19, True)])))
    assert good == {"expanded": True, "first": True, "HParams:": True}
    crowded = _checks(report([("Story", 13, True), ("eval", 19, True)]))
    assert [ok for ok, what in crowded if what.startswith("first group")] == [False]
    old = _checks(report([("eval", 19, True), ("grad_norm", 6, True)]))
    assert not any(ok for ok, what in old if what.startswith(("expanded", "first group")))

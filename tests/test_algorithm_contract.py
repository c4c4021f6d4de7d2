"""The algorithm contract carries its own duties, and "Adding an algorithm" (docs/architecture.md) is complete:
the docs' on-policy example, written only from that page, is treated as on-policy everywhere; the base class
counts updates, checks parameters, refuses steps that bypass the stepper, and cannot be bypassed by overriding
``update``."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from marl_stability import agents
from marl_stability.agents.base import BASE_STATS, Algorithm, NonFiniteParameters, StepperBypassed
from marl_stability.config import BUILTIN_ALGORITHMS, load_config

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"
MODULE = "docs_algorithm_example"


def example_module() -> types.ModuleType:
    """The page's example block as an importable module (``algo=docs_algorithm_example:Reinforce``)."""
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    block = re.search(r"<!-- algorithm-example.*?-->\n```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert block, f"algorithm example block missing from {PAGE.name}"
    module = types.ModuleType(MODULE)
    exec(compile(block.group(1), str(PAGE), "exec"), module.__dict__)
    sys.modules[MODULE] = module
    return module


def tiny(algo: str, extra: list[str] = ()) -> Any:
    return load_config(ROOT / "experiments" / "maddpg_spread.yaml",
                       [f"algo={algo}", "train.steps=600", "train.eval_every=300", "train.eval_episodes=1",
                        "env.num_envs=2", "ppo.gamma=0.9", "maddpg.gamma=0.95", "fixes.reward.mode=normalize",
                        "train.checkpoint_every=600", *extra])


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from marl_stability.training.trainer import Trainer

    example_module()
    run = tmp_path_factory.mktemp("contract") / "reinforce"
    Trainer(tiny(f"{MODULE}:Reinforce"), run, quiet=True).run()
    return run


def test_the_docs_example_is_on_policy_everywhere(example_run: Path) -> None:
    from marl_stability.analysis.doctor import diagnose
    from marl_stability.core.build import build_run
    from marl_stability.core.hooks import RunContext
    from marl_stability.core.sinks import Logger, MemorySink
    from marl_stability.hooks.builtin import PlasticityHook
    from marl_stability.runs.record import RunRecord

    summary = json.loads((example_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["on_policy"] is True
    assert summary["updates"] == 600 // (2 * example_module().Reinforce.T)
    # the on-policy fixes are reported with the off-policy ones
    assert "ppo.value_norm" in summary["fixes"] and "grad_clip.critic.mode" in summary["fixes"]
    # the reward normalizer accumulates returns with the on-policy discount (ppo.gamma); the plasticity metrics
    # would run after every update (the on-policy default), not every 50th
    parts = build_run(tiny(f"{MODULE}:Reinforce"), probe=False)
    try:
        assert parts.fixes.reward.gamma == 0.9 and parts.algorithm.gamma == 0.9
        ctx = RunContext(cfg=parts.algorithm.cfg, run_dir=example_run, layout=parts.layout, algorithm=parts.algorithm,
                         logger=Logger([MemorySink()]))
        assert PlasticityHook(ctx).every == 1
    finally:
        parts.close()
    # reading the finished run: on-policy, and doctor gives the on-policy diagnosis
    assert RunRecord(example_run).on_policy
    assert "on_policy" in diagnose(example_run)


def test_builtin_capabilities_are_class_attributes() -> None:
    assert {n: c.on_policy for n, c in agents.ALGORITHMS.items()} == {"maddpg": False, "matd3": False, "mappo": True,
                                                                      "ippo": True}
    cfg = load_config(None, ["ppo.gamma=0.9", "maddpg.gamma=0.95"])
    assert {n: c.discount(cfg) for n, c in agents.ALGORITHMS.items()} == {"maddpg": 0.95, "matd3": 0.95, "mappo": 0.9,
                                                                          "ippo": 0.9}
    assert set(BUILTIN_ALGORITHMS) == set(agents.ALGORITHMS)  # the config's names (no torch) match the registry
    for cls in agents.ALGORITHMS.values():
        assert all(p in cls.stat_prefixes for p in BASE_STATS)


# ---------------------------------------------------------------------------------------------- the duties
def _variant(learn_body: Any) -> type:
    """The docs example with another ``learn``."""
    base = example_module().Reinforce
    return type("Variant", (base,), {"learn": learn_body})


def _built(cls: type) -> Algorithm:
    from marl_stability.core.build import build_run

    sys.modules[MODULE].Variant = cls
    parts = build_run(tiny(f"{MODULE}:Variant"), probe=False)
    parts.close()
    algo = parts.algorithm
    algo.rollout = [(torch.zeros(2, 3, 18).numpy(), torch.full((2, 3, 5), 0.5).numpy(), torch.ones(2, 3).numpy())] * 10
    return algo


def test_update_counts_and_adds_the_base_scalars() -> None:
    algo = _built(_variant(example_module().Reinforce.learn))
    stats = algo.update()
    assert algo.updates == 1 and algo.stepper.update == 1
    assert list(stats.scalars)[-2:] == list(BASE_STATS) and stats.scalars["health/nonfinite_updates"] == 0.0
    assert [s.model for s in stats.steps] == [f"actor/agent_{i}" for i in range(3)]


def test_a_step_that_bypasses_the_stepper_is_refused() -> None:
    def learn(self: Any) -> dict[str, float]:
        loss = sum(a.weight.sum() for a in self.actors)
        loss.backward()
        self.opts[0].step()  # not through self.stepper: no gradient statistics, no clipping
        return {}

    with pytest.raises(StepperBypassed, match="1 time"):
        _built(_variant(learn)).update()
    # outside an update, a user's own optimizer steps are none of our business
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    p.sum().backward()
    opt.step()


def test_nonfinite_parameters_are_caught_by_the_base_class() -> None:
    def learn(self: Any) -> dict[str, float]:
        with torch.no_grad():
            self.actors[1].bias.fill_(float("nan"))
        return {}

    with pytest.raises(NonFiniteParameters, match="after update 1") as err:
        _built(_variant(learn)).update()
    assert err.value.evidence["what"] == "parameters"


def test_overriding_update_is_refused_at_class_creation() -> None:
    with pytest.raises(TypeError, match="implement learn"):
        type("Sneaky", (example_module().Reinforce,), {"update": lambda self: None})

"""The fix registry: every stability fix declared once.

A fix's entry says what it is called (``id``, and the ``title`` doctor and the fix-evidence tables print), which
algorithm families it is advice for and in which practitioner's order, where it acts, the config keys it owns
(what ``summary.json`` reports under ``fixes``), the overrides that turn it on for a given run, whether a run
already uses it, which single-fix arms measured it, and whether and how it can be applied to a run in progress.
Everything else is derived from here: :func:`fix_settings` (summary.json), doctor's candidate fixes, the fix-evidence
table's arm -> fix mapping and the docs' fix table (docs/configuration.md) (``tests/test_fixes.py`` checks each).

Adding a fix is one entry here plus its implementation (a config field and the object or network piece that reads
it). This module imports no torch (doctor and the docs read it); it sits in the fixes layer, above config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from marl_stability.config import RunConfig, flatten

Family = Literal["off_policy", "on_policy"]
ActsOn = Literal["algorithm", "network", "optimizer", "reward", "observation"]


def section(cfg: dict[str, Any], *path: str) -> dict[str, Any]:
    """``cfg[path[0]][path[1]]...`` of a raw (resolved) config dict, ``{}`` where a level is missing."""
    for name in path:
        value = cfg.get(name) if isinstance(cfg, dict) else None
        cfg = value if isinstance(value, dict) else {}
    return cfg


@dataclass(frozen=True)
class FixSpec:
    """One fix. ``settings``: config keys it owns (a key ending in ``.`` owns every key below it). ``overrides``:
    the ``--set`` items that apply it to a run with config ``cfg`` (a list, or a function of ``cfg``).
    ``applied(cfg)``: the run already uses it. ``order``: family -> practitioner's order (lower: try first);
    the families it is listed for. ``advised``: doctor suggests it (False: a switch for ablations only).
    ``live``: how it can be applied to a run in progress (None: only at the start of a run)."""

    id: str
    title: str
    acts_on: ActsOn
    acts_at: str
    settings: tuple[str, ...]
    overrides: list[str] | Callable[[dict[str, Any]], list[str]]
    applied: Callable[[dict[str, Any]], bool]
    order: dict[str, int]
    evidence_arms: tuple[str, ...] = ()
    live: str | None = None
    advised: bool = True

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.order)

    def overrides_for(self, cfg: dict[str, Any]) -> list[str]:
        return list(self.overrides(cfg) if callable(self.overrides) else self.overrides)

    def owns(self, key: str) -> bool:
        return any(key == s or (s.endswith(".") and key.startswith(s)) for s in self.settings)


def _lower_lr(cfg: dict[str, Any]) -> list[str]:
    """Both learning rates 10x lower than the run's (Adam's 1e-2 -> 1e-3, as the single-fix tables measured)."""
    out = []
    for net in ("actor_optim", "critic_optim"):
        lr = section(cfg, net).get("lr")
        out.append(f"{net}.lr={(float(lr) if isinstance(lr, (int, float)) else 1e-2) / 10:g}")
    return out


def _sgd(cfg: dict[str, Any]) -> bool:
    return "sgd" in (section(cfg, "actor_optim").get("name"), section(cfg, "critic_optim").get("name"))


def _clip_on(cfg: dict[str, Any], net: str = "critic") -> bool:
    return section(cfg, "fixes", "grad_clip", net).get("mode", "none") != "none"


def _entropy_override(cfg: dict[str, Any]) -> list[str]:
    return [f"ppo.entropy_coef={2 * float(section(cfg, 'ppo').get('entropy_coef', 0.01)) or 0.01:g}"]


def _fewer_epochs(cfg: dict[str, Any]) -> list[str]:
    return [f"ppo.epochs={max(1, int(section(cfg, 'ppo').get('epochs', 10)) // 2)}"]


OFF, ON = "off_policy", "on_policy"

FIXES: list[FixSpec] = [
    # Within one order number the registry order decides (off- and on-policy entries interleaved so that both
    # families keep doctor's order).
    FixSpec("grad_clip", "clip gradients (global L2 norm)", "optimizer", "after backward(), before step()",
            ("fixes.grad_clip.",),
            ["fixes.grad_clip.critic.mode=global_norm", "fixes.grad_clip.critic.max=1.0",
             "fixes.grad_clip.actor.mode=global_norm", "fixes.grad_clip.actor.max=1.0"],
            _clip_on, {OFF: 1}, ("clip",), live="yes: the clipper reads mode and limit at every step"),
    FixSpec("lr_eps", "lower the learning rate and raise Adam's eps", "optimizer", "optimizers",
            ("actor_optim.lr", "critic_optim.lr", "actor_optim.eps", "critic_optim.eps"),
            ["actor_optim.lr=0.0003", "critic_optim.lr=0.0003", "actor_optim.eps=1e-05", "critic_optim.eps=1e-05"],
            lambda c: bool((lr := section(c, "actor_optim").get("lr")) and lr <= 3e-4
                           and (eps := section(c, "actor_optim").get("eps")) and eps >= 1e-5),
            {ON: 1}, ("lr_eps",), live="yes: each optimizer's param-group learning rate and eps"),
    FixSpec("grad_clip_10", "clip gradients (global L2 norm 10, the MAPPO reference)", "optimizer",
            "after backward(), before step()", ("fixes.grad_clip.",),
            ["fixes.grad_clip.actor.mode=global_norm", "fixes.grad_clip.actor.max=10",
             "fixes.grad_clip.critic.mode=global_norm", "fixes.grad_clip.critic.max=10"],
            lambda c: _clip_on(c, "actor"), {ON: 1}, ("grad_clip",),
            live="yes: the clipper reads mode and limit at every step"),
    FixSpec("lower_lr", "lower the learning rate", "optimizer", "optimizers", ("actor_optim.lr", "critic_optim.lr"),
            _lower_lr, lambda c: bool((lr := section(c, "critic_optim").get("lr")) and lr <= 1e-3 and not _sgd(c)),
            {OFF: 2}, ("lower_lr",), live="yes: each optimizer's param-group learning rate"),
    FixSpec("value_norm", "value normalization", "algorithm", "critic targets", ("ppo.value_norm",),
            ["ppo.value_norm=true"], lambda c: bool(section(c, "ppo").get("value_norm", True)), {ON: 2}, ("value_norm",)),
    FixSpec("reward_scale", "scale or normalize the reward", "reward", "rewards sampled for the learner",
            ("fixes.reward.",), ["fixes.reward.mode=normalize"],
            lambda c: section(c, "fixes", "reward").get("mode", "none") != "none", {OFF: 2, ON: 2}, ("reward_scale",),
            live="yes: from statistics kept all along while train.heal is on (stored transitions keep their raw reward)"),
    FixSpec("small_init", "small last-layer init", "network", "network construction",
            ("actor.last_layer_init", "critic.last_layer_init"), ["actor.last_layer_init=0.003"],
            lambda c: section(c, "actor").get("last_layer_init") is not None, {OFF: 3}, ("small_init",),
            live="yes: re-initialise the actor's last layer (its optimizer state for that layer reset)"),
    FixSpec("tanh_scaled", "tanh output scaled to the action bounds", "network", "actor output head",
            ("actor.output",), ["actor.output=tanh_scaled"],
            lambda c: section(c, "actor").get("output") in ("tanh_scaled", "auto"), {OFF: 3}, ("tanh_scaled",),
            live="yes: the head has no parameters; the same pre-activations map to new actions"),
    FixSpec("entropy", "raise the entropy coefficient", "algorithm", "actor loss", ("ppo.entropy_coef",),
            _entropy_override, lambda c: False, {ON: 3}, live="yes: the loss term from the next update"),
    FixSpec("log_std_bounds", "bound the log-std", "network", "policy head",
            ("ppo.log_std", "ppo.log_std_bounds"), ["ppo.log_std_bounds=[-5.0, -0.7]"],
            lambda c: section(c, "ppo").get("log_std_bounds") is not None, {ON: 3}, ("log_std_bounds",),
            live="yes: the bounds clamp the head's output from the next action"),
    FixSpec("beta", "a bounded action distribution (Beta on the bounds)", "network", "policy head",
            ("ppo.distribution",), ["ppo.distribution=beta"],
            lambda c: section(c, "ppo").get("distribution", "auto") not in ("auto", "gaussian"), {ON: 3}, ("beta",)),
    # ppo.epochs is the update budget: summary.json reports it with the config, not under fixes.
    FixSpec("fewer_epochs", "fewer PPO epochs", "algorithm", "PPO update", (), _fewer_epochs, lambda c: False,
            {ON: 4}, live="yes: from the next rollout"),
    FixSpec("huber_value", "Huber value loss and value clipping", "algorithm", "value loss",
            ("ppo.value_loss", "ppo.value_clip", "ppo.huber_delta"), ["ppo.value_loss=huber", "ppo.value_clip=0.2"],
            lambda c: section(c, "ppo").get("value_loss") == "huber" and section(c, "ppo").get("value_clip") is not None,
            {ON: 4}, live="yes: the value loss from the next update"),
    FixSpec("advantage_norm", "advantage normalization", "algorithm", "advantages of each rollout",
            ("ppo.advantage_norm",), ["ppo.advantage_norm=true"],
            lambda c: bool(section(c, "ppo").get("advantage_norm", True)), {ON: 5}, live="yes: from the next rollout"),
    FixSpec("obs_norm", "normalize observations", "observation", "every network input", ("fixes.obs_norm.",),
            ["fixes.obs_norm.enabled=true"], lambda c: bool(section(c, "fixes", "obs_norm").get("enabled", False)),
            {OFF: 3, ON: 5}, ("obs_norm",),
            live="yes: from statistics kept all along while train.heal is on (the networks' inputs change scale at once)"),
    FixSpec("norm_layers", "normalization layers", "network", "after each hidden linear", ("actor.norm", "critic.norm"),
            ["actor.norm=layernorm", "critic.norm=layernorm"],
            lambda c: section(c, "actor").get("norm", "none") != "none", {OFF: 4}),
    FixSpec("residual", "residual blocks", "network", "equal-width hidden layers",
            ("actor.residual", "critic.residual"), ["actor.residual=true", "critic.residual=true"],
            lambda c: bool(section(c, "actor").get("residual")), {OFF: 4}),
    FixSpec("preact_penalty", "openai/maddpg's pre-activation penalty", "algorithm", "actor loss",
            ("fixes.actor_preact_l2",), ["fixes.actor_preact_l2=0.001"],
            lambda c: (section(c, "fixes").get("actor_preact_l2", 0.0) or 0.0) > 0, {OFF: 4},
            live="yes: a loss term from the next update"),
    FixSpec("huber", "Huber critic loss", "algorithm", "critic loss", ("maddpg.critic_loss",),
            ["maddpg.critic_loss=huber"], lambda c: section(c, "maddpg").get("critic_loss") == "huber", {OFF: 5},
            live="yes: the critic loss from the next update"),
    FixSpec("adam", "Adam instead of SGD", "optimizer", "optimizers", ("actor_optim.name", "critic_optim.name"),
            ["actor_optim.name=adam", "critic_optim.name=adam"], lambda c: not _sgd(c), {OFF: 5}, ("adam",),
            live="yes: new optimizers over the same parameters (Adam's moments start at zero)"),
    FixSpec("activation", "activation swap", "network", "hidden layers", ("actor.activation", "critic.activation"),
            ["actor.activation=elu", "critic.activation=elu"],
            lambda c: section(c, "actor").get("activation", "relu") != "relu", {OFF: 6}, advised=False),
    FixSpec("init_scheme", "init scheme", "network", "network construction", ("actor.init", "critic.init"),
            ["actor.init=orthogonal", "critic.init=orthogonal"],
            lambda c: section(c, "actor").get("init", "default") != "default", {OFF: 6}, advised=False),
    FixSpec("input_layernorm", "LayerNorm on the inputs", "network", "actor and critic inputs",
            ("ppo.input_layernorm",), ["ppo.input_layernorm=true"],
            lambda c: bool(section(c, "ppo").get("input_layernorm", True)), {ON: 6}, advised=False),
]


def register(spec: FixSpec) -> FixSpec:
    """Add a fix (a plug-in's, or a test's); its id must be new."""
    if any(f.id == spec.id for f in FIXES):
        raise ValueError(f"a fix named {spec.id!r} is already registered")
    FIXES.append(spec)
    return spec


def get(fix_id: str) -> FixSpec:
    for f in FIXES:
        if f.id == fix_id:
            return f
    raise KeyError(fix_id)


def for_family(family: str, advised_only: bool = True) -> list[FixSpec]:
    """The fixes listed for ``family`` in its practitioner's order (registry order breaks ties)."""
    chosen = [f for f in FIXES if family in f.families and (f.advised or not advised_only)]
    return sorted(chosen, key=lambda f: f.order[family])


def in_use(cfg: RunConfig, on_policy: bool) -> list[FixSpec]:
    """The fixes of the run's own algorithm family that its config uses (``applied``), in registry order. The
    other family's fixes do not apply (MAPPO's ``actor.output: auto`` is no use of MADDPG's scaled-tanh fix)."""
    family, flat = (ON if on_policy else OFF), cfg.to_dict()
    return [f for f in FIXES if family in f.families and f.applied(flat)]


def arm_fixes(family: str | None = None) -> dict[str, str]:
    """Single-fix arm name -> the title of the fix it measured (the fix-evidence tables' join); ``family``: only that
    family's fixes (an on-policy sweep's ``lower_lr`` arm is not the off-policy lower-lr fix)."""
    return {arm: f.title for f in FIXES if family is None or family in f.families for arm in f.evidence_arms}


def fix_settings(cfg: RunConfig, on_policy: bool) -> dict[str, Any]:
    """The resolved settings of every fix, flat and in config order (what summary.json reports as ``fixes``):
    the keys owned by an off-policy fix, and for an on-policy run also those of the on-policy fixes (off-policy
    runs keep the summary they had). Keys under ``fixes.`` drop that prefix."""
    families = (OFF, ON) if on_policy else (OFF,)
    owners = [f for f in FIXES if any(fam in f.families for fam in families)]
    flat = flatten(cfg.to_dict())
    return {k.removeprefix("fixes."): v for k, v in flat.items() if any(f.owns(k) for f in owners)}


def markdown_table() -> str:
    """The docs' fix table (docs/configuration.md), one row per registered fix."""
    rows = ["| fix | id | config keys | acts at | advice for | on a live run | measured by arms |", "|---|---|---|---|---|---|---|"]
    for f in FIXES:
        keys = ", ".join(f"`{k}*`" if k.endswith(".") else f"`{k}`" for k in f.settings) or "—"
        advice = ", ".join(f"{fam.replace('_', '-')} ({f.order[fam]})" for fam in f.families) if f.advised else "— (a switch)"
        rows.append(f"| {f.title} | `{f.id}` | {keys} | {f.acts_on}: {f.acts_at} | {advice} | {f.live or 'no: at the start of a run'} "
                    f"| {', '.join(f'`{a}`' for a in f.evidence_arms) or '—'} |")
    return "\n".join(rows) + "\n"

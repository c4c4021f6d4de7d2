"""Tag names across versions: the prefixes renamed by the TensorBoard regrouping (0.2.0) and their mapping.

Readers of old event files (reproduce's figures, doctor) and the monitor's returned statistics (old keys
answered with a FutureWarning until 0.3.0) go through :func:`current_tag`. No dependencies: any layer may use it.
"""

from __future__ import annotations

# Tag prefixes before the regrouping (runs written by earlier versions) -> today's, longest first.
LEGACY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("grad_norm_postclip/", "optim/grad_norm_postclip/"), ("grad_norm_layer/", "layers/grad_norm/"),
    ("weight_norm_layer/", "layers/weight_norm/"), ("update_ratio_layer/", "layers/update_ratio/"),
    ("update_ratio/", "optim/update_ratio/"), ("clip_active/", "optim/clip_active/"),
    ("clip_fraction/", "optim/clip_fraction/"), ("episode/", "rollout/"), ("eval/actions/", "hist/eval_actions/"),
    ("actions/", "hist/train_actions/"), ("actor/preact_max_abs_batch/", "policy/preact_max_abs_batch/"),
    ("actor/preact_max_abs/", "policy/preact_max_abs/"), ("actor/preact_mean_abs/", "policy/preact_mean_abs/"),
    ("actor/preact/", "hist/eval_preact/"), ("actor/saturation/", "policy/saturation/"),
    ("actor/repeat_rate/", "policy/repeat_rate/"), ("actor/batch_same_action/", "policy/batch_same_action/"),
    ("actor/sensitivity/", "policy/sensitivity/"), ("critic/q_initial/", "q/initial/"), ("critic/", "q/"),
)


def current_tag(tag: str) -> str:
    """Today's name of a tag an earlier version wrote (unchanged when it is already current)."""
    for old, new in LEGACY_PREFIXES:
        if tag.startswith(old):
            return new + tag[len(old):]
    return tag

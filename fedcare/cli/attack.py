"""``fedcare privacy attack``: the leak audit of the heart job, with and without DP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from fedcare.cli.output import console, fail
from fedcare.core.errors import FedcareError

privacy_app = typer.Typer(no_args_is_help=True,
                          help="Differential privacy: what a membership attack still learns.")


@privacy_app.command("attack")
def attack_cmd(
    param: Annotated[list[str], typer.Option(
        help="heart job parameter key=value, e.g. dp='{max_grad_norm: 1, target_epsilon: 1}'"
             " or algorithm=dp_fedavg")] = [],  # noqa: B006
    seeds: Annotated[int, typer.Option(help="seeds 0..N-1 (mean and sd over them)")] = 3,
    policy: Annotated[Path | None, typer.Option(
        help="a site policy YAML applied at every site (e.g. a gaussian_noise filter)")] = None,
) -> None:
    """Membership inference on the heart job's final model and shared updates, run with the
    given privacy settings and without them: attack AUC (0.5 = guessing) next to epsilon."""
    from fedcare.cli.main import _parse_params, _read_site_policy
    from fedcare.core.policy import SitePolicy
    from fedcare.jobs.heart_attack import audit, without_dp

    if seeds < 1:
        raise fail(f"--seeds must be >= 1, got {seeds}")
    try:
        params = _parse_params(param)
        site_policy = _read_site_policy(policy) if policy is not None else None
        if site_policy is not None and not isinstance(site_policy, SitePolicy):
            raise fail("--policy: give one policy for every site (no per-site sections)")
        runs = {
            "with these settings": [audit({"split": "flamby", **params, "seed": s},
                                          site_policy=site_policy) for s in range(seeds)],
            "without DP": [audit({"split": "flamby", **without_dp(params), "seed": s})
                           for s in range(seeds)],
        }
    except FedcareError as exc:
        raise fail(exc) from None
    table = Table(title=f"Leak audit, heart job, {seeds} seed(s): membership-inference AUC "
                        "(0.5 = guessing; about +-0.04 is chance)")
    for column in ("run", "epsilon", "mechanism", "accuracy", "model AUC",
                   "update AUC"):
        table.add_column(column)
    for name, audits in runs.items():
        eps = [a.epsilon for a in audits if a.epsilon is not None]
        mechanism = (audits[0].mechanism or "").removesuffix("_epsilon")
        table.add_row(
            name, f"{np.mean(eps):.3g}" if eps else "inf (no DP)", mechanism,
            _mean_sd([a.accuracy for a in audits]), _mean_sd([a.model_auc for a in audits]),
            _mean_sd([a.update_auc for a in audits]))
    console.print(table)
    console.print("model AUC: loss-threshold attack on the final model; update AUC: "
                  "loss-difference attack on what each site shares in a round.")


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

"""Cross-site validation: every site's local model and the global model, evaluated at every site.

After training, each site is asked for its local model (``submit_model``: by default the last
update that left the site, so nothing leaves that had not left already), then every model is
sent to every site to evaluate (``validate``) on its held-out data. The result is a models x
sites matrix of metrics, saved as ``cross_site_validation.json`` with the run: it shows whether
the global model serves every hospital better than each hospital's own. The document holds
``global`` (site -> metrics of the global model there) and ``local`` (model owner -> site ->
metrics).

Local models are kept on disk in the run folder (in memory without one) and sent one at a time,
so the server holds one model at a time besides the global one.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from fedcare.core.ids import site_id_problem
from fedcare.core.message import Config, EvalResult, TaskKind, TrainResult
from fedcare.core.validation import incompatibilities
from fedcare.core.weights import Weights
from fedcare.core.workflow import Gather, SiteFailure, Workflow, WorkflowContext
from fedcare.server.checkpoint import load_weights, save_weights

GLOBAL = "global"


def _constant(config: Config) -> Callable[[str], Config]:
    """The same task settings for every site."""
    return lambda site_id: config


class CrossSiteValidation(Workflow):
    """Evaluate the global model and each site's local model at every site."""

    name = "cross_site_validation"
    task_kinds = ("submit_model", "validate")
    needs_local_models = True

    def __init__(self, *, include_local: bool = True) -> None:
        self.include_local = include_local

    def run(self, ctx: WorkflowContext, weights: Weights) -> Weights:
        round_num = ctx.job.num_rounds
        failures: list[SiteFailure] = []
        with contextlib.ExitStack() as stack:
            if ctx.run_dir is not None:
                folder = ctx.run_dir / "cross_site"
            else:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            # (owner, model): the global model (owner None), then each site's local one
            models: list[tuple[str | None, Path | Weights]] = [(None, weights)]
            if self.include_local:
                models += self._collect(ctx, round_num, weights, folder, failures).items()
            rows: dict[str | None, dict[str, dict[str, float]]] = {}
            samples: dict[str, int] = {}
            for index, (owner, model) in enumerate(models):
                payload = model if isinstance(model, Weights) else load_weights(model)
                config: Config = {"model": GLOBAL if owner is None else f"local:{owner}"}
                request = Gather(TaskKind.VALIDATE, round_num, ctx.sites(), EvalResult, payload,
                                 _constant(config), attempt=index)
                row: dict[str, dict[str, float]] = {}
                with contextlib.closing(ctx.gather(request, failures)) as arrivals:
                    for arrival in arrivals:
                        result = arrival.result
                        assert isinstance(result, EvalResult)
                        row[arrival.site_id] = dict(result.metrics)
                        samples[arrival.site_id] = result.num_samples
                rows[owner] = dict(sorted(row.items()))
                del payload
        ctx.save_result(self.name, {
            "sites": sorted(samples), "num_samples": dict(sorted(samples.items())),
            "global": rows.pop(None),
            "local": {str(owner): row for owner, row in rows.items()},
            "failures": [{"site_id": f.site_id, "kind": f.kind, "message": f.message}
                         for f in failures]})
        return weights

    def _collect(self, ctx: WorkflowContext, round_num: int, weights: Weights, folder: Path,
                 failures: list[SiteFailure]) -> dict[str, Path]:
        """Each site's local model, completed with the global values of what it keeps local
        (e.g. FedBN's layers), saved under ``folder``."""
        request = Gather(TaskKind.SUBMIT_MODEL, round_num, ctx.sites(), TrainResult)
        saved: dict[str, Path] = {}
        with contextlib.closing(ctx.gather(request, failures)) as arrivals:
            for arrival in arrivals:
                result = arrival.result
                assert isinstance(result, TrainResult)
                # names beyond the model's (SCAFFOLD's control-variate changes) are not part of
                # the model; what the site kept to itself (FedBN) takes the global values
                submitted = {k: v for k, v in result.weights.items() if k in weights}
                model = Weights({**weights, **submitted})
                problems = incompatibilities(weights, model)
                problem = ("model does not match: " + "; ".join(problems) if problems
                           else site_id_problem(arrival.site_id))  # it names the file below
                if problem:
                    ctx.fail(failures, SiteFailure(arrival.site_id, round_num, "submit_model",
                                                   problem))
                    continue
                saved[arrival.site_id] = save_weights(folder / f"{arrival.site_id}.npz", model)
        return dict(sorted(saved.items()))

"""Cross-site validation: the global model and every site's local model, evaluated at every site.

After training, each site is asked for its local model (``submit_model``), then every model is
sent to every site to evaluate (``validate``) on its held-out data, with the same trainer that
evaluates the job's rounds. The result is the models x sites matrix of
:mod:`fedcare.core.cross_site`, saved with the run as ``cross_site.json``: it shows whether the
global model serves every hospital better than each hospital's own. Models travel as tasks; no
data leaves a site, only the metrics its trainer reports.

A site's *local model* is, by default, the last training update that left the site (the model
it trained in the job's last round it took part in, from that round's global model, after its
outbound filters: clipped, noised, variables excluded): what the server already received once,
so submitting it releases nothing new and spends no more privacy budget. An update that left
only inside a secure sum or a ciphertext (secure or homomorphic rounds) is not one: such a site
has no local model to send, and its row says so. A trainer with a
``local_model(config)`` method sends its own instead (e.g. its best checkpoint), but only at a
site without outbound filters, where nothing would have filtered it (see
:class:`fedcare.site.SiteAgent`).

Both task kinds are optional for a site's privacy policy: a site whose ``task_kinds`` leaves out
``submit_model`` (or ``validate``) still takes part in the job and refuses only those tasks;
its row (or column) of the matrix is then empty, every cell saying why. No failure here stops
the job: every other cell is kept. The server keeps the local models on disk (one in memory at
a time besides the global model) only while the step runs, and deletes them when it ends (and
those a server killed during the step left, when the step runs again).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from fedcare.core.cross_site import GLOBAL, RESULT, Cell, CrossSiteMatrix, local_model
from fedcare.core.ids import site_id_problem
from fedcare.core.message import Config, EvalResult, TaskKind, TrainResult
from fedcare.core.validation import incompatibilities
from fedcare.core.weights import Weights
from fedcare.core.workflow import Gather, SiteFailure, Workflow, WorkflowContext
from fedcare.server.checkpoint import load_weights, save_weights

#: The start of the name of the folder that holds the local models while the step runs.
_MODELS = "cross_site-models-"


def _constant(config: Config) -> Callable[[str], Config]:
    """The same task settings for every site."""
    return lambda site_id: config


class CrossSiteValidation(Workflow):
    """Evaluate the global model and each site's local model at every site.

    Args:
        include_local: Ask the sites for their local models; False evaluates the global model
            alone (one row).
    """

    name = "cross_site_validation"
    task_kinds = ("submit_model", "validate")
    optional_kinds = ("submit_model", "validate")
    needs_local_models = True

    def __init__(self, *, include_local: bool = True) -> None:
        self.include_local = include_local

    def run(self, ctx: WorkflowContext, weights: Weights) -> Weights:
        round_num = ctx.job.num_rounds
        sites = ctx.sites()
        columns = sorted(set(ctx.job.site_ids or ()) | set(sites))
        absent = {s: "not connected when cross-site validation began"
                  for s in columns if s not in sites}
        rows = [GLOBAL, *(local_model(s) for s in columns)] if self.include_local else [GLOBAL]
        cells: dict[tuple[str, str], Cell] = {}
        if ctx.run_dir is not None:
            ctx.run_dir.mkdir(parents=True, exist_ok=True)
            for left in ctx.run_dir.glob(f"{_MODELS}*"):  # by a server killed mid-step
                shutil.rmtree(left, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=_MODELS, dir=ctx.run_dir) as folder:
            models: list[tuple[str, Path | Weights]] = [(GLOBAL, weights)]
            if self.include_local:
                saved, missing = self._collect(ctx, round_num, weights, Path(folder), sites)
                models += [(local_model(s), path) for s, path in saved.items()]
                for site, reason in {**absent, **missing}.items():
                    for column in columns:
                        cells[(local_model(site), column)] = Cell(
                            error=f"no local model from {site}: {reason}")
            for index, (model, source) in enumerate(models):
                payload = source if isinstance(source, Weights) else load_weights(source)
                cells.update(self._validate(ctx, round_num, model, payload, sites, index))
                for site, reason in absent.items():
                    cells[(model, site)] = Cell(error=reason)
                del payload
        matrix = CrossSiteMatrix(ctx.job_id, round_num, tuple(rows), tuple(columns), cells)
        ctx.save_result(RESULT, matrix.to_dict())
        return weights

    def _validate(self, ctx: WorkflowContext, round_num: int, model: str, payload: Weights,
                  sites: list[str], attempt: int) -> dict[tuple[str, str], Cell]:
        """The row of ``model``: evaluated at each of ``sites``, or why not."""
        failures: list[SiteFailure] = []
        request = Gather(TaskKind.VALIDATE, round_num, sites, EvalResult, payload,
                         _constant({"model": model}), attempt=attempt)
        row: dict[tuple[str, str], Cell] = {}
        with contextlib.closing(ctx.gather(request, failures)) as arrivals:
            for arrival in arrivals:
                result = arrival.result
                assert isinstance(result, EvalResult)
                row[(model, arrival.site_id)] = Cell(dict(result.metrics), result.num_samples)
        for failure in failures:
            row[(model, failure.site_id)] = Cell(error=failure.message)
        return row

    def _collect(self, ctx: WorkflowContext, round_num: int, weights: Weights, folder: Path,
                 sites: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
        """Each site's local model, completed with the global values of what it keeps local
        (e.g. FedBN's layers), saved under ``folder``; and why each other site sent none."""
        failures: list[SiteFailure] = []
        request = Gather(TaskKind.SUBMIT_MODEL, round_num, sites, TrainResult)
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
        missing = {f.site_id: f.message for f in failures}
        return dict(sorted(saved.items())), missing

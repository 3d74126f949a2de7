// Live progress of one job: the dashboard's /jobs/ID/events stream (server-sent events, one
// "update" per change of the job, then "end"), drawn into the page without reloading it.
"use strict";
(function () {
  const progress = document.getElementById("progress");
  if (!progress || progress.dataset.live !== "yes") return;
  const jobId = progress.dataset.jobId;
  const $ = (id) => document.getElementById(id);
  let shownRound = Number($("round-num").textContent);

  function refreshCharts() {
    fetch(`/jobs/${jobId}/charts`, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => { $("charts").innerHTML = html; })  // rendered and escaped by the server
      .catch(() => {});
  }

  // The first update repeats the failures the page already shows: each is added once.
  const shownFailures = new Set(
    Array.from($("failures").tBodies[0].rows, (row) => row.dataset.key));

  function addFailure(f) {
    const round = f.round_num === null || f.round_num === undefined ? "-" : f.round_num;
    const key = `${f.site_id}|${round}|${f.kind}|${f.message}`;
    if (shownFailures.has(key)) return;
    shownFailures.add(key);
    const row = document.createElement("tr");
    row.dataset.key = key;
    for (const value of [f.site_id, f.round_num, f.kind, f.message]) {
      const cell = document.createElement("td");
      cell.textContent = value === null || value === undefined ? "-" : String(value);
      row.appendChild(cell);
    }
    row.firstChild.className = "site";
    row.lastChild.className = "wrap";
    $("failures").tBodies[0].appendChild(row);
    $("no-failures").hidden = true;
  }

  function show(state) {
    const status = $("status");
    status.textContent = state.status;
    status.className = `badge ${state.status}`;
    $("round-num").textContent = state.round_num;
    $("num-rounds").textContent = state.num_rounds;
    $("round-bar").max = state.num_rounds || 1;
    $("round-bar").value = state.round_num;
    const metrics = state.eval_metrics || {};
    $("latest").textContent = Object.keys(metrics).sort()
      .map((k) => `${k}=${Number(metrics[k]).toFixed(4)}`).join(" ");
    $("summary").textContent = state.summary || "";
    (state.new_failures || []).forEach(addFailure);
    if (state.round_num !== shownRound) {
      shownRound = state.round_num;
      refreshCharts();
    }
  }

  function ended(text) {
    $("live-state").textContent = text;
    const abort = $("abort-form");
    if (abort) abort.remove();
    refreshCharts();
  }

  const source = new EventSource(`/jobs/${jobId}/events`);
  source.addEventListener("update", (e) => show(JSON.parse(e.data)));
  source.addEventListener("end", () => { source.close(); ended("(ended)"); });
  source.addEventListener("failure", (e) => {
    source.close();
    ended(`(live updates stopped: ${JSON.parse(e.data).message})`);
  });
  source.onerror = () => { $("live-state").textContent = "(reconnecting...)"; };
})();

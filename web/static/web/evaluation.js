// The evaluation page: runs in progress show their status and percent, read from the REST API
// every few seconds; once one finishes the page reloads to show its figures and the chart.
"use strict";

const RUN_POLL_MS = 2000;

document.addEventListener("DOMContentLoaded", () => {
  const page = document.getElementById("evaluation-page");
  if (!page) return;
  const error = document.getElementById("runs-error");

  function activeRows() {
    return Array.from(page.querySelectorAll("[data-run-id][data-active]"));
  }

  async function runsWithStatus(status) {
    const url = page.dataset.runsUrl + "?knowledge_base=" + encodeURIComponent(page.dataset.kbId) + "&status=" + status;
    const response = await apiFetch(url);
    if (!response.ok) throw new Error(await apiErrorText(response));
    return (await response.json()).results;
  }

  function show(row, run) {
    row.dataset.status = run.status;
    const badge = row.querySelector(".js-status");
    if (badge) {
      badge.className = "badge js-status " + run.status;
      badge.textContent = page.getAttribute("data-text-status-" + run.status) || run.status;
    }
    const bar = row.querySelector(".js-progress");
    if (bar) bar.value = Number(run.progress) || 0;
    const percent = row.querySelector(".js-percent");
    if (percent) percent.textContent = (Number(run.progress) || 0) + "%";
  }

  async function poll() {
    const rows = activeRows();
    if (!rows.length) return;
    try {
      const active = new Map();
      for (const status of ["running", "queued"]) {
        for (const run of await runsWithStatus(status)) active.set(String(run.id), run);
      }
      for (const row of rows) {
        const run = active.get(row.dataset.runId);
        if (!run) {
          window.location.reload(); // finished (or failed): the server renders its figures
          return;
        }
        show(row, run);
      }
      error.hidden = true;
    } catch (failure) {
      error.textContent = page.dataset.textPollFailed + " " + failure.message;
      error.hidden = false;
    }
    window.setTimeout(poll, RUN_POLL_MS);
  }

  if (activeRows().length) window.setTimeout(poll, RUN_POLL_MS);
});

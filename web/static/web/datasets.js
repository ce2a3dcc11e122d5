// Dataset pages: a build under way (queued or building) shows its status and percent, read from
// the REST API every second with the session cookie (apiFetch, app.js), as kb.js follows
// documents; once it is ready or failed the page reloads and the server renders the report, the
// preview and the download. Comparisons of an adapter with its base model, and their evaluation
// runs, are followed the same way (queued or running; their URL in data-poll-url). Each
// `.js-follow` container holds the status labels (data-text-status-*) and a `.js-poll-error`.
"use strict";

const ACTIVE_DATASET_STATUSES = new Set(["queued", "building", "running"]);
const DATASET_POLL_MS = 1000;

function followProgress(page) {
  const error = page.querySelector(".js-poll-error");

  function activeElements() {
    return Array.from(page.querySelectorAll("[data-dataset-url][data-active], [data-poll-url][data-active]"));
  }

  function show(element, dataset) {
    element.dataset.status = dataset.status;
    const badge = element.querySelector(".js-status");
    if (badge) {
      badge.className = "badge js-status " + dataset.status;
      badge.textContent = page.getAttribute("data-text-status-" + dataset.status) || dataset.status;
    }
    const percent = Math.max(0, Math.min(100, Number(dataset.progress) || 0));
    const bar = element.querySelector(".js-progress");
    if (bar) bar.value = percent;
    const label = element.querySelector(".js-percent");
    if (label) label.textContent = percent + "%";
  }

  async function poll() {
    const elements = activeElements();
    if (!elements.length) return;
    try {
      for (const element of elements) {
        const response = await apiFetch(element.dataset.datasetUrl || element.dataset.pollUrl);
        if (response.status === 404) {
          window.location.reload(); // deleted meanwhile
          return;
        }
        if (!response.ok) throw new Error(await apiErrorText(response));
        const dataset = await response.json();
        show(element, dataset);
        if (!ACTIVE_DATASET_STATUSES.has(dataset.status)) {
          window.location.reload(); // built (or failed): the server renders what it holds
          return;
        }
      }
      error.hidden = true;
    } catch (failure) {
      error.textContent = page.dataset.textPollFailed + " " + failure.message;
      error.hidden = false;
    }
    window.setTimeout(poll, DATASET_POLL_MS);
  }

  if (activeElements().length) window.setTimeout(poll, DATASET_POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".js-follow").forEach(followProgress);
});

// A knowledge base's page: upload by drag and drop, follow ingestion live, delete documents,
// hit testing, where an admin may add a result to an evaluation set, and follow a web source's sync
// under way. Everything goes through the REST API with the session cookie (apiFetch, app.js), the
// evaluation set through the evaluation page's view.
// Document names, texts and failure reasons come from uploaded files, which anyone in the team
// may have written: they are only ever inserted with textContent.
"use strict";

const ACTIVE_STATUSES = new Set(["queued", "parsing", "embedding"]);
const ACTIVE_WEB_SOURCE_STATUSES = new Set(["queued", "syncing"]);
const POLL_MS = 1000;
const PAGE_SIZE = 200;
const ALL_MODES = ["hybrid", "vector", "fulltext"];

document.addEventListener("DOMContentLoaded", () => {
  const page = document.getElementById("kb-page");
  if (!page) return;
  const text = (name) => page.getAttribute("data-text-" + name) || "";
  const withId = (template, id) => template.replace(/\/0\/$/, "/" + id + "/");

  const rowsBody = document.getElementById("document-rows");
  const rowTemplate = document.getElementById("document-row-template");
  const emptyNote = document.getElementById("documents-empty");
  const documentsError = document.getElementById("documents-error");
  let pollTimer = null;

  // --- the document table -----------------------------------------------------------------

  function rows() {
    return Array.from(rowsBody.querySelectorAll("tr[data-document-id]"));
  }

  function rowFor(id) {
    return rowsBody.querySelector('tr[data-document-id="' + Number(id) + '"]');
  }

  function setProgress(row, value) {
    const percent = Math.max(0, Math.min(100, Number(value) || 0));
    // An inline style attribute would be blocked by the CSP; the style property is not.
    row.querySelector(".js-progress").style.width = percent + "%";
    row.querySelector(".progress").setAttribute("aria-valuenow", String(percent));
    row.querySelector(".js-percent").textContent = percent + "%";
  }

  // The counts above the table follow what the rows do (the table may not show every document).
  const counters = {
    total: document.getElementById("count-total"),
    ready: document.getElementById("count-ready"),
    failed: document.getElementById("count-failed"),
  };

  function count(name, delta) {
    const element = counters[name];
    if (element && delta) element.textContent = String(Math.max(0, (Number(element.textContent) || 0) + delta));
  }

  function countStatus(status, delta) {
    if (status === "ready" || status === "failed") count(status, delta);
  }

  function fillRow(row, doc) {
    if (row.dataset.status !== doc.status) {
      countStatus(row.dataset.status, -1);
      countStatus(doc.status, 1);
    }
    row.dataset.documentId = String(doc.id);
    row.dataset.status = doc.status;
    const name = row.querySelector(".js-name");
    name.textContent = doc.original_name;
    name.href = withId(page.dataset.documentPageUrl, doc.id); // its sections and chunks, and the file
    const badge = row.querySelector(".js-status");
    badge.className = "badge js-status " + doc.status;
    badge.textContent = text("status-" + doc.status) || doc.status;
    setProgress(row, doc.status === "ready" ? 100 : doc.progress);
    row.querySelector(".js-chunks").textContent = String(doc.chunk_count);
    row.querySelector(".js-error").textContent = doc.error || "";
    row.querySelector(".js-notice").textContent = doc.notice || "";
  }

  function newRow() {
    const row = rowTemplate.content.firstElementChild.cloneNode(true);
    wireRow(row);
    return row;
  }

  // Newest first, as the server renders them.
  function insertSorted(row) {
    const id = Number(row.dataset.documentId);
    const after = rows().find((other) => Number(other.dataset.documentId) < id);
    rowsBody.insertBefore(row, after || null);
    emptyNote.hidden = true;
  }

  function upsert(doc) {
    let row = rowFor(doc.id);
    if (!row) {
      row = newRow();
      fillRow(row, doc);
      insertSorted(row);
      count("total", 1);
    } else {
      fillRow(row, doc);
    }
    return row;
  }

  function removeRow(row) {
    row.remove();
    count("total", -1);
    countStatus(row.dataset.status, -1);
    emptyNote.hidden = rows().length > 0;
  }

  function wireRow(row) {
    const button = row.querySelector(".js-delete");
    if (button) button.addEventListener("click", () => deleteDocument(row, button));
  }

  async function deleteDocument(row, button) {
    if (!window.confirm(text("confirm-delete"))) return;
    button.disabled = true;
    const response = await apiFetch(withId(page.dataset.documentUrl, row.dataset.documentId), { method: "DELETE" });
    if (response.ok || response.status === 404) {
      removeRow(row);
      return;
    }
    button.disabled = false;
    showError(documentsError, text("delete-failed") + " " + (await apiErrorText(response)));
  }

  // --- live progress ----------------------------------------------------------------------

  function activeIds() {
    return rows()
      .filter((row) => ACTIVE_STATUSES.has(row.dataset.status))
      .map((row) => Number(row.dataset.documentId));
  }

  function schedulePoll() {
    if (pollTimer === null && activeIds().length) pollTimer = window.setTimeout(poll, POLL_MS);
  }

  // Pages run newest first: read them until past the oldest document still in progress.
  async function poll() {
    pollTimer = null;
    const active = activeIds();
    if (!active.length) return;
    const oldestActive = Math.min(...active);
    let url = page.dataset.documentsUrl + "?page_size=" + PAGE_SIZE;
    const seen = new Set();
    let coveredDownTo = 0;
    try {
      while (url) {
        const response = await apiFetch(url);
        if (!response.ok) throw new Error(await apiErrorText(response));
        const body = await response.json();
        for (const doc of body.results) {
          seen.add(doc.id);
          upsert(doc);
        }
        const last = body.results[body.results.length - 1];
        if (!body.next || !last) {
          coveredDownTo = 0;
          break;
        }
        coveredDownTo = last.id;
        if (last.id <= oldestActive) break;
        const next = new URL(body.next, window.location.href);
        url = next.pathname + next.search; // same origin even behind a proxy that rewrites the host
      }
      // Rows in the range read but no longer there were deleted elsewhere; an active one would
      // otherwise keep the polling going for ever.
      for (const row of rows()) {
        const id = Number(row.dataset.documentId);
        if (id >= coveredDownTo && !seen.has(id)) removeRow(row);
      }
      documentsError.hidden = true;
    } catch (error) {
      showError(documentsError, text("poll-failed") + " " + error.message);
    }
    schedulePoll();
  }

  // --- web sources: a sync under way ------------------------------------------------------
  // A source queued or syncing shows its status and pages done as GET /api/v1/web-sources/{id}/
  // reports them (labels from the section's data-text-* attributes). When its sync ends (synced
  // or failed) the page reloads: the server renders its last sync and the documents its pages
  // became, which the polling above follows until they are ready.

  const webSources = document.getElementById("web-sources");
  const webSourcesError = webSources ? webSources.querySelector(".js-poll-error") : null;
  let webSourcePollTimer = null;

  function activeWebSources() {
    if (!webSources) return [];
    return Array.from(webSources.querySelectorAll("tr[data-web-source-url]")).filter((row) =>
      ACTIVE_WEB_SOURCE_STATUSES.has(row.dataset.status),
    );
  }

  function showWebSource(row, source) {
    row.dataset.status = source.status;
    const badge = row.querySelector(".js-status");
    badge.className = "badge js-status status-" + source.status;
    badge.textContent = webSources.getAttribute("data-text-status-" + source.status) || source.status;
    const percent = Math.max(0, Math.min(100, Number(source.progress) || 0));
    const bar = row.querySelector(".js-progress");
    if (bar) bar.value = percent;
    const values = { done: Number(source.pages_done) || 0, total: Number(source.pages_total) || 0, percent: percent };
    row.querySelector(".js-pages").textContent = (webSources.dataset.textPages || "").replace(
      /\{(done|total|percent)\}/g,
      (match, name) => String(values[name]),
    );
  }

  function scheduleWebSourcePoll() {
    if (webSourcePollTimer === null && activeWebSources().length) {
      webSourcePollTimer = window.setTimeout(pollWebSources, POLL_MS);
    }
  }

  async function pollWebSources() {
    webSourcePollTimer = null;
    try {
      for (const row of activeWebSources()) {
        const response = await apiFetch(row.dataset.webSourceUrl);
        if (response.status === 404) {
          window.location.reload(); // deleted meanwhile
          return;
        }
        if (!response.ok) throw new Error(await apiErrorText(response));
        const source = await response.json();
        showWebSource(row, source);
        if (!ACTIVE_WEB_SOURCE_STATUSES.has(source.status)) {
          window.location.reload(); // synced or failed: the server renders its last sync and documents
          return;
        }
      }
      webSourcesError.hidden = true;
    } catch (error) {
      showError(webSourcesError, text("poll-failed") + " " + error.message);
    }
    scheduleWebSourcePoll();
  }

  // --- upload -----------------------------------------------------------------------------

  const dropzone = document.getElementById("dropzone");
  const fileInput = document.getElementById("file-input");
  const uploadResult = document.getElementById("upload-result");

  function resultList(title, items, className, testId) {
    const block = document.createElement("div");
    block.className = className;
    block.dataset.testid = testId;
    const heading = document.createElement("p");
    heading.textContent = title;
    block.appendChild(heading);
    const list = document.createElement("ul");
    for (const item of items) {
      const entry = document.createElement("li");
      entry.textContent = item;
      list.appendChild(entry);
    }
    block.appendChild(list);
    uploadResult.appendChild(block);
  }

  // Most reasons name their file already.
  function rejectionText(item) {
    return item.reason.includes(item.name) ? item.reason : item.name + ": " + item.reason;
  }

  function showUploadResult(body) {
    uploadResult.replaceChildren();
    const created = body.documents || [];
    const duplicates = body.duplicates || [];
    const rejected = body.rejected || [];
    for (const doc of created) upsert(doc);
    for (const doc of duplicates) {
      const row = upsert(doc);
      row.querySelector(".js-duplicate").hidden = false;
      row.classList.add("duplicate");
    }
    if (created.length) {
      resultList(text("uploaded"), created.map((doc) => doc.original_name), "upload-created", "upload-created");
    }
    if (duplicates.length) {
      resultList(text("duplicates"), duplicates.map((doc) => doc.original_name), "upload-duplicates", "upload-duplicates");
    }
    if (rejected.length) {
      resultList(text("rejected"), rejected.map(rejectionText), "upload-rejected error", "upload-rejected");
    }
    schedulePoll();
  }

  async function upload(files) {
    if (!files.length) return;
    const form = new FormData();
    for (const file of files) form.append("file", file, file.name);
    uploadResult.replaceChildren();
    const status = document.createElement("p");
    status.className = "muted";
    status.textContent = text("uploading");
    uploadResult.appendChild(status);
    let response;
    try {
      response = await apiFetch(page.dataset.documentsUrl, { method: "POST", body: form });
    } catch (error) {
      status.className = "error";
      status.textContent = text("upload-failed") + " " + error.message;
      return;
    }
    const body = await response.clone().json().catch(() => null);
    if (response.ok && body) {
      showUploadResult(body);
      return;
    }
    // Every file refused: the details carry the same lists as a success does.
    const details = body && body.error && body.error.details;
    if (details && Array.isArray(details.rejected)) {
      showUploadResult(details);
      return;
    }
    status.className = "error";
    status.textContent = text("upload-failed") + " " + (await apiErrorText(response));
  }

  if (dropzone && fileInput) {
    for (const name of ["dragenter", "dragover"]) {
      dropzone.addEventListener(name, (event) => {
        event.preventDefault();
        dropzone.classList.add("over");
      });
    }
    for (const name of ["dragleave", "dragend"]) {
      dropzone.addEventListener(name, () => dropzone.classList.remove("over"));
    }
    dropzone.addEventListener("drop", (event) => {
      event.preventDefault();
      dropzone.classList.remove("over");
      upload(Array.from(event.dataTransfer ? event.dataTransfer.files : []));
    });
    fileInput.addEventListener("change", () => {
      const files = Array.from(fileInput.files || []);
      fileInput.value = "";
      upload(files);
    });
  }

  // --- hit testing ------------------------------------------------------------------------

  const searchForm = document.getElementById("search-form");
  const searchResults = document.getElementById("search-results");
  const searchError = document.getElementById("search-error");
  const searchStatus = document.getElementById("search-status");

  // Admins get, next to each result, a form that adds the query as a question of an evaluation
  // set expecting this result's document (the server's template, with its CSRF token).
  const evalAddTemplate = document.getElementById("eval-add-template");

  function evalAddForm(query, documentName) {
    const form = evalAddTemplate.content.firstElementChild.cloneNode(true);
    form.elements.question.value = query;
    form.elements.expected_document.value = documentName;
    const status = form.querySelector(".js-eval-status");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      status.className = "js-eval-status muted";
      status.textContent = text("adding");
      try {
        const response = await apiFetch(form.action, {
          method: "POST",
          body: new FormData(form),
          headers: { Accept: "application/json" },
        });
        if (!response.ok) throw new Error(await apiErrorText(response));
        status.className = "js-eval-status ok";
        status.textContent = (await response.json()).message;
      } catch (error) {
        status.className = "js-eval-status error";
        status.textContent = error.message;
        button.disabled = false;
      }
    });
    return form;
  }

  function hitItem(hit, query) {
    const item = document.createElement("li");
    item.className = "hit";
    item.dataset.testid = "hit";
    const meta = document.createElement("div");
    meta.className = "hit-meta";
    const score = document.createElement("span");
    score.className = "badge hit-score";
    score.dataset.testid = "hit-score";
    score.textContent = text("score") + " " + Number(hit.score).toFixed(4);
    const link = document.createElement("a");
    link.href = withId(page.dataset.chunkUrl, hit.chunk_id);
    link.dataset.testid = "hit-link";
    link.textContent = hit.document_name;
    meta.append(score, " ", link);
    const metadata = hit.metadata || {};
    const where = [];
    if (metadata.page) where.push(text("page") + " " + metadata.page);
    if (Array.isArray(metadata.heading_path) && metadata.heading_path.length) where.push(metadata.heading_path.join(" › "));
    if (where.length) {
      const place = document.createElement("span");
      place.className = "muted";
      place.textContent = " · " + where.join(" · ");
      meta.appendChild(place);
    }
    const body = document.createElement("div");
    body.className = "hit-text";
    body.dataset.testid = "hit-text";
    body.textContent = hit.text;
    item.append(meta, body);
    if (evalAddTemplate) item.appendChild(evalAddForm(query, hit.document_name));
    return item;
  }

  function hitColumn(mode, hits, query) {
    const column = document.createElement("div");
    column.className = "hit-column";
    column.dataset.mode = mode;
    column.dataset.testid = "hit-column";
    const heading = document.createElement("h3");
    heading.textContent = text("mode-" + mode) || mode;
    column.appendChild(heading);
    if (!hits.length) {
      const none = document.createElement("p");
      none.className = "muted";
      none.textContent = text("no-hits");
      column.appendChild(none);
      return column;
    }
    const list = document.createElement("ol");
    list.className = "hits";
    for (const hit of hits) list.appendChild(hitItem(hit, query));
    column.appendChild(list);
    return column;
  }

  async function searchOnce(query, topK, mode) {
    const response = await apiFetch(page.dataset.searchUrl, {
      method: "POST",
      json: { query: query, top_k: topK, mode: mode },
    });
    if (!response.ok) throw new Error(await apiErrorText(response));
    return (await response.json()).results;
  }

  if (searchForm) {
    searchForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(searchForm);
      const query = String(data.get("query") || "").trim();
      if (!query) return;
      const topK = Number(data.get("top_k")) || 5;
      const chosen = String(data.get("mode"));
      const modes = chosen === "all" ? ALL_MODES : [chosen];
      const button = searchForm.querySelector("button[type=submit]");
      button.disabled = true;
      searchError.hidden = true;
      searchStatus.textContent = text("searching");
      try {
        const results = await Promise.all(modes.map((mode) => searchOnce(query, topK, mode)));
        searchResults.replaceChildren(...modes.map((mode, index) => hitColumn(mode, results[index], query)));
        searchResults.classList.toggle("side-by-side", modes.length > 1);
      } catch (error) {
        showError(searchError, text("search-failed") + " " + error.message);
      } finally {
        searchStatus.textContent = "";
        button.disabled = false;
      }
    });
  }

  function showError(element, message) {
    element.textContent = message;
    element.hidden = false;
  }

  // --- start ------------------------------------------------------------------------------

  for (const row of rows()) {
    wireRow(row);
    setProgress(row, row.dataset.status === "ready" ? 100 : row.querySelector(".js-progress").dataset.progress);
  }
  schedulePoll();
  scheduleWebSourcePoll();
});

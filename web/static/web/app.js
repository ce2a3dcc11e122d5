// Shared by every page: selects that submit their form, and the CSRF token for fetch().
"use strict";

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function apiFetch(url, options = {}) {
  const headers = Object.assign({ "X-CSRFToken": csrfToken() }, options.headers || {});
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  return fetch(url, Object.assign({ credentials: "same-origin" }, options, { headers }));
}

// A readable message from an API error body ({"error": {"message": ...}}) or the status line.
async function apiErrorText(response) {
  try {
    const body = await response.json();
    if (body.error && body.error.message) return body.error.message;
    if (body.detail) return body.detail;
    return JSON.stringify(body);
  } catch (_) {
    return response.status + " " + response.statusText;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form.js-autosubmit")) {
    for (const select of form.querySelectorAll("select")) {
      select.addEventListener("change", () => form.submit());
    }
  }
});

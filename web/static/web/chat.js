// The conversation page: answers streamed over SSE from the REST API (private chats) or over the
// room's WebSocket (team rooms); stop, regenerate, feedback, dropped files and the summary.
// Text from the model arrives as tokens and is shown with textContent; once an answer ends, the
// server's sanitised HTML for the message replaces it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("conversation");
  if (!root) return;
  const conversationId = root.dataset.conversationId;
  const isRoom = root.dataset.room === "1";
  const messages = document.getElementById("messages");
  const form = document.getElementById("composer");
  const input = document.getElementById("composer-input");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const regenerateButton = document.getElementById("regenerate");
  const errorBox = document.getElementById("chat-error");
  const api = "/api/v1/conversations/" + conversationId + "/";

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function scrollDown() {
    messages.scrollTop = messages.scrollHeight;
  }

  function setBusy(busy) {
    if (!form) return;
    sendButton.disabled = busy;
    if (regenerateButton) regenerateButton.disabled = busy;
    stopButton.hidden = !busy;
  }

  function bubble(role, text) {
    const article = document.createElement("article");
    article.className = "message " + role;
    article.dataset.role = role;
    article.dataset.testid = "message";
    article.setAttribute("data-testid", "message");
    const body = document.createElement("div");
    body.className = "body streaming";
    body.setAttribute("data-testid", "message-body");
    body.textContent = text;
    article.appendChild(body);
    messages.appendChild(article);
    scrollDown();
    return article;
  }

  function htmlToElement(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();  // the server's own template: sanitised markdown, escaped text
    return template.content.firstElementChild;
  }

  function upsertMessage(id, html) {
    const fresh = htmlToElement(html);
    const existing = messages.querySelector('[data-message-id="' + id + '"]');
    if (existing) {
      existing.replaceWith(fresh);
    } else {
      const later = Array.from(messages.querySelectorAll("[data-message-id]")).find((el) => Number(el.dataset.messageId) > id);
      messages.insertBefore(fresh, later || null);
    }
    if (Number(root.dataset.lastMessageId) < id) root.dataset.lastMessageId = String(id);
    scrollDown();
  }

  async function replaceWithSaved(article, messageId) {
    const response = await fetch("/messages/" + messageId + "/", { credentials: "same-origin" });
    if (response.ok) {
      article.remove();
      upsertMessage(messageId, await response.text());
    }
  }

  async function refreshSummary() {
    const details = document.querySelector(".js-summary");
    if (!details || !details.open) return;
    const response = await fetch(details.dataset.summaryUrl, { credentials: "same-origin" });
    if (response.ok) document.getElementById("summary-text").replaceWith(htmlToElement(await response.text()));
  }

  // --- private chats: Server-Sent Events over fetch ------------------------------------------------

  async function streamAnswer(url, body) {
    showError("");
    setBusy(true);
    const article = bubble("assistant", "");
    const target = article.querySelector(".body");
    let messageId = null;
    try {
      const response = await apiFetch(url, { method: "POST", json: body, headers: { Accept: "text/event-stream" } });
      if (!response.ok) {
        article.remove();
        showError(await apiErrorText(response));
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = (block.match(/^event: (.*)$/m) || [])[1];
          const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "{}");
          if (event === "sources") { messageId = data.message_id; article.dataset.messageId = String(messageId); }
          else if (event === "token") { target.appendChild(document.createTextNode(data.text)); scrollDown(); }
          else if (event === "error") { showError(root.dataset.textFailed + " " + data.message); }
        }
      }
    } catch (error) {
      showError(String(error));
    } finally {
      setBusy(false);
      if (messageId !== null) await replaceWithSaved(article, messageId);
      else if (!target.textContent) article.remove();  // failed before the answer began: the error says why
      else target.classList.remove("streaming");
      refreshSummary();
    }
  }

  async function sendPrivate(text) {
    bubble("user", text);
    await streamAnswer(api + "messages/", { content: text, stream: true });
    // The user's own message comes back from the server too (with its id) on the next load;
    // refresh the list so the new conversation shows its generated title there.
  }

  // --- team rooms: one WebSocket per page, reconnecting with catch-up ------------------------------

  let socket = null;
  let retryDelay = 500;
  const streamingAnswers = new Map();

  function connectRoom() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const since = root.dataset.lastMessageId || "0";
    socket = new WebSocket(scheme + location.host + "/ws/rooms/" + conversationId + "/?since=" + since);
    root.roomSocket = socket;  // a handle for the browser tests' dropped-connection case
    socket.addEventListener("open", () => { retryDelay = 500; showError(""); });
    socket.addEventListener("message", (event) => onRoomEvent(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      if (event.code === 4401 || event.code === 4404) { showError(root.dataset.textFailed + " " + event.code); return; }
      // 4403: removed from the team or deactivated; the reason says so, and reconnecting cannot help.
      if (event.code === 4403) { showError(event.reason || root.dataset.textFailed + " " + event.code); if (form) form.hidden = true; return; }
      showError(root.dataset.textReconnecting);
      setTimeout(connectRoom, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    });
  }

  function onRoomEvent(event) {
    if (event.type === "history") {
      for (const message of event.messages) upsertMessage(message.id, message.html);
    } else if (event.type === "message") {
      upsertMessage(event.id, event.html);
    } else if (event.type === "answer_start") {
      const article = bubble("assistant", "");
      article.dataset.messageId = String(event.message_id);
      streamingAnswers.set(event.message_id, article);
      setBusy(true);
    } else if (event.type === "token") {
      let article = streamingAnswers.get(event.message_id) || messages.querySelector('[data-message-id="' + event.message_id + '"]');
      if (!article) { article = bubble("assistant", ""); article.dataset.messageId = String(event.message_id); streamingAnswers.set(event.message_id, article); }
      article.querySelector(".body").appendChild(document.createTextNode(event.text));
      scrollDown();
    } else if (event.type === "answer_end") {
      streamingAnswers.delete(event.message_id);
      upsertMessage(event.message_id, event.html);
      setBusy(streamingAnswers.size > 0);
      refreshSummary();
    } else if (event.type === "presence") {
      const presence = document.getElementById("presence");
      if (presence) presence.textContent = root.dataset.textOnline + " " + event.users.join(", ");
    } else if (event.type === "error") {
      showError(event.message);
    }
  }

  // --- the composer and the buttons ---------------------------------------------------------------

  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = input.value;
      if (!text.trim()) return;
      input.value = "";
      if (isRoom) {
        if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "message", content: text }));
        else { input.value = text; showError(root.dataset.textReconnecting); }
      } else {
        sendPrivate(text);
      }
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); form.requestSubmit(); }
    });
    stopButton.addEventListener("click", () => apiFetch(api + "stop/", { method: "POST" }));
    if (isRoom) {
      regenerateButton.hidden = true;
    } else {
      regenerateButton.addEventListener("click", () => {
        const all = Array.from(messages.querySelectorAll('.message'));
        const lastUser = all.map((el) => el.dataset.role).lastIndexOf("user");
        all.slice(lastUser + 1).forEach((el) => el.remove());
        streamAnswer(api + "regenerate/", {});
      });
    }
    setupFileDrop();
  }

  messages.addEventListener("click", async (event) => {
    const button = event.target.closest(".js-feedback");
    if (!button) return;
    const article = button.closest("[data-message-id]");
    const value = button.classList.contains("chosen") ? 0 : Number(button.dataset.value);
    const response = await apiFetch("/api/v1/messages/" + article.dataset.messageId + "/feedback/", { method: "POST", json: { value } });
    if (!response.ok) { showError(await apiErrorText(response)); return; }
    for (const other of article.querySelectorAll(".js-feedback")) other.classList.toggle("chosen", Number(other.dataset.value) === value);
    // An admin may add an answer marked good to an evaluation set.
    const evalAdd = article.querySelector(".js-eval-add");
    if (evalAdd) evalAdd.hidden = value !== 1;
  });

  const summary = document.querySelector(".js-summary");
  if (summary) summary.addEventListener("toggle", refreshSummary);

  function setupFileDrop() {
    const zone = document.getElementById("dropzone");
    const fileInput = document.getElementById("file-input");
    const status = document.getElementById("file-status");
    async function upload(files) {
      if (!files.length) return;
      const body = new FormData();
      for (const file of files) body.append("file", file);
      status.textContent = "…";
      const response = await apiFetch(api + "files/", { method: "POST", body });
      let result = {};
      try { result = await response.json(); } catch (_) { /* an error page */ }
      const parts = (result.documents || []).map((doc) => doc.original_name + ": " + doc.status);
      for (const rejected of result.rejected || []) parts.push(rejected.name + ": " + rejected.reason);
      if (!response.ok && !parts.length) {
        parts.push((result.error && result.error.message) || response.status + " " + response.statusText);
      }
      status.textContent = parts.join(" · ");
      for (const doc of result.documents || []) watchDocument(doc, parts);
    }
    async function watchDocument(doc, parts) {
      for (let i = 0; i < 600 && doc.status !== "ready" && doc.status !== "failed"; i++) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        const response = await fetch("/api/v1/documents/" + doc.id + "/", { credentials: "same-origin" });
        if (!response.ok) return;
        const fresh = await response.json();
        doc.status = fresh.status;
        const line = doc.original_name + ": " + fresh.status + (fresh.status === "failed" ? " (" + fresh.error + ")" : fresh.status === "ready" ? "" : " " + fresh.progress + "%");
        status.textContent = line;
      }
    }
    fileInput.addEventListener("change", () => upload(Array.from(fileInput.files)));
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => { event.preventDefault(); zone.classList.remove("over"); upload(Array.from(event.dataTransfer.files)); });
  }

  if (isRoom) connectRoom();
  scrollDown();
});

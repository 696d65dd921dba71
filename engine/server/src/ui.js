// The one script of airlock's pages: follows a step's log as it is
// written, and sends approval decisions and cancellations to the run API.
// Calls carry `x-airlock-csrf`, which the API asks of every change made
// with the session cookie.
"use strict";

async function followLog(pre) {
  const response = await fetch(pre.dataset.src + "?follow=true", { credentials: "same-origin" });
  if (!response.ok) {
    pre.textContent = "cannot read the log: " + response.status;
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pre.textContent += decoder.decode(value, { stream: true });
    pre.scrollTop = pre.scrollHeight;
  }
  const state = document.getElementById("log-state");
  if (state) state.textContent = "ended";
}

async function send(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-airlock-csrf": "1" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  return { ok: response.ok, answer };
}

function decide(form, approve) {
  const result = document.getElementById("result");
  const body = {
    code: document.getElementById("code").value.trim(),
    approve,
    reason: document.getElementById("reason").value || null,
  };
  const path = "/api/v1/runs/" + encodeURIComponent(form.dataset.run) + "/approvals/" + encodeURIComponent(form.dataset.step);
  send(path, body).then(({ ok, answer }) => {
    if (ok) {
      result.textContent = (approve ? "Approved" : "Denied") + ": the request is now " + answer.record.state + ".";
      result.className = "succeeded";
    } else {
      result.textContent = answer.error ? answer.error.message : "the server refused";
      result.className = "failed";
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const pre = document.getElementById("log");
  if (pre) followLog(pre);
  const form = document.getElementById("decide");
  if (form) {
    document.getElementById("approve").addEventListener("click", () => decide(form, true));
    document.getElementById("deny").addEventListener("click", () => decide(form, false));
  }
  const cancel = document.getElementById("cancel");
  if (cancel) {
    cancel.addEventListener("click", () => {
      send("/api/v1/runs/" + encodeURIComponent(cancel.dataset.run) + "/cancel").then(({ ok, answer }) => {
        document.getElementById("result").textContent = ok ? "cancelling" : answer.error.message;
      });
    });
  }
});

// Phone page: show the link's uploads from the server (so a reload loses nothing), send each
// chosen file (raw body, progress shown), then poll for its result. Its sentences come from the
// page (data-strings, translated there), with {fields} filled in by fill().
"use strict";

(() => {
  const base = location.pathname.replace(/\/+$/, "");
  const list = document.getElementById("uploads");
  const template = document.getElementById("upload-item");
  const limits = document.getElementById("limits");
  const closed = document.getElementById("closed");
  const buttons = document.querySelectorAll("button[data-input]");
  const strings = JSON.parse(list.dataset.strings);
  const names = strings.labels;
  const fill = (text, fields) => text.replace(/\{(\w+)\}/g, (whole, key) => (key in fields ? fields[key] : whole));
  const shown = new Set();
  let queue = Promise.resolve();
  let sending = 0; // while a file is on its way, its upload may be listed before its card knows its id

  function item(name) {
    const node = template.content.firstElementChild.cloneNode(true);
    node.querySelector(".name").textContent = name;
    list.prepend(node);
    return {
      node,
      progress: node.querySelector("progress"),
      state: node.querySelector(".state"),
      picture: node.querySelector(".result"),
      table: node.querySelector(".probabilities"),
      notice: node.querySelector(".notice"),
    };
  }

  function fail(view, message) {
    view.node.classList.add("failed");
    view.progress.hidden = true;
    view.state.textContent = message || strings.failed;
  }

  function withheld(view, message) {
    view.progress.hidden = true;
    view.state.textContent = message;
  }

  function show(upload, view) {
    view.progress.hidden = true;
    view.state.textContent = fill(strings.estimate, { label: names[upload.label] || upload.label });
    if (upload.picture) {
      view.picture.alt = fill(strings.picture, { name: view.node.querySelector(".name").textContent });
      view.picture.addEventListener("load", () => { view.picture.hidden = false; });
      view.picture.src = `${base}/files/${upload.id}/picture`;
    }
    const body = view.table.tBodies[0];
    for (const [name, p] of Object.entries(upload.probabilities)) {
      const row = body.insertRow();
      row.className = name === upload.label ? "predicted" : "";
      row.insertCell().textContent = names[name] || name;
      row.insertCell().textContent = `${(100 * p).toFixed(1)}%`;
    }
    view.table.hidden = false;
    view.notice.hidden = false;
  }

  function settle(upload, view) {
    if (upload.status === "done") show(upload, view);
    else if (upload.status === "failed") fail(view, upload.error);
    else if (upload.status === "withheld") withheld(view, upload.error);
    else {
      view.state.textContent = strings.analysing;
      poll(upload.id, view);
    }
  }

  async function poll(id, view) {
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      let response;
      try {
        response = await fetch(`${base}/files/${id}`, { cache: "no-store" });
      } catch (error) {
        continue; // a dropped connection: try again
      }
      const body = await response.json().catch(() => ({}));
      if (!response.ok) return fail(view, body.error);
      if (body.status !== "pending") return settle(body, view);
    }
  }

  // The link's state from the server: what it still takes, and every upload not shown yet.
  async function refresh() {
    const response = await fetch(`${base}/files`, { cache: "no-store" }).catch(() => null);
    if (!response) return;
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      body.open = false;
      body.closed = body.error || strings.unusable;
    }
    limits.textContent = body.limits || "";
    limits.hidden = !body.open;
    closed.textContent = body.closed || "";
    closed.hidden = Boolean(body.open);
    for (const button of buttons) button.disabled = !body.open;
    (body.uploads || []).forEach((upload, index) => {
      if (sending || shown.has(upload.id)) return;
      shown.add(upload.id);
      const view = item(fill(strings.sent, { n: index + 1, time: upload.created }));
      view.progress.value = 100;
      settle(upload, view);
    });
  }

  function send(file, view) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `${base}/files`);
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) view.progress.value = (100 * event.loaded) / event.total;
      });
      xhr.addEventListener("load", () => {
        let body = {};
        try {
          body = JSON.parse(xhr.responseText);
        } catch (error) {
          body = {};
        }
        if (xhr.status === 201) {
          shown.add(body.id);
          view.progress.value = 100;
          settle(body, view);
        } else {
          fail(view, body.error || fill(strings.http, { status: xhr.status }));
        }
        resolve();
      });
      xhr.addEventListener("error", () => {
        fail(view, strings.offline);
        resolve();
      });
      xhr.send(file);
    });
  }

  for (const button of buttons) {
    button.addEventListener("click", () => document.getElementById(button.dataset.input).click());
  }
  for (const input of document.querySelectorAll("input[type=file]")) {
    input.addEventListener("change", () => {
      const files = Array.from(input.files);
      input.value = "";
      for (const file of files) {
        const view = item(file.name);
        sending += 1;
        queue = queue.then(() => send(file, view)).then(() => { sending -= 1; return refresh(); });
      }
    });
  }
  refresh();
  setInterval(refresh, 30000);
})();

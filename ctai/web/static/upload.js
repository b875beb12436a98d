// Phone page: send each chosen file (raw body, progress shown), then poll for its result.
"use strict";

(() => {
  const base = location.pathname.replace(/\/+$/, "");
  const list = document.getElementById("uploads");
  const template = document.getElementById("upload-item");
  const names = { normal: "Normal", bacterial: "Bacterial pneumonia", viral: "Viral pneumonia" };
  let queue = Promise.resolve();

  function item() {
    const node = template.content.firstElementChild.cloneNode(true);
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
    view.state.textContent = message || "Something went wrong.";
  }

  function show(id, result, view) {
    view.state.textContent = `Result: ${names[result.label] || result.label}`;
    if (result.picture) {
      view.picture.addEventListener("load", () => { view.picture.hidden = false; });
      view.picture.src = `${base}/files/${id}/picture`;
    }
    const body = view.table.tBodies[0];
    for (const [name, p] of Object.entries(result.probabilities)) {
      const row = body.insertRow();
      row.className = name === result.label ? "predicted" : "";
      row.insertCell().textContent = names[name] || name;
      row.insertCell().textContent = `${(100 * p).toFixed(1)}%`;
    }
    view.table.hidden = false;
    view.notice.hidden = false;
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
      if (body.status === "done") return show(id, body, view);
      if (body.status === "failed") return fail(view, body.error);
    }
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
          view.progress.value = 100;
          view.state.textContent = "Uploaded. Analysing…";
          poll(body.id, view);
        } else {
          fail(view, body.error || `The upload failed (HTTP ${xhr.status}).`);
        }
        resolve();
      });
      xhr.addEventListener("error", () => {
        fail(view, "The upload did not get through. Check the connection and try again.");
        resolve();
      });
      xhr.send(file);
    });
  }

  for (const input of document.querySelectorAll("input[type=file]")) {
    input.addEventListener("change", () => {
      const files = Array.from(input.files);
      input.value = "";
      for (const file of files) {
        const view = item();
        queue = queue.then(() => send(file, view));
      }
    });
  }
})();

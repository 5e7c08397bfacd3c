// ClassGuard review page: claim keep-alive, evidence reveal, keyboard shortcuts.
// Loaded as a file (the Content-Security-Policy forbids inline script).
"use strict";

(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const body = document.body;

  function post(url) {
    return fetch(url, { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
  }

  function typing(e) {
    const t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }

  // ---- queue: j/k to move, Enter to open ----
  if (body.dataset.page === "queue") {
    const rows = Array.from(document.querySelectorAll("#queue tbody tr"));
    let at = -1;
    const select = (i) => {
      if (!rows.length) return;
      if (at >= 0) rows[at].classList.remove("selected");
      at = Math.max(0, Math.min(rows.length - 1, i));
      rows[at].classList.add("selected");
      rows[at].scrollIntoView({ block: "nearest" });
    };
    document.addEventListener("keydown", (e) => {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "j") select(at + 1);
      else if (e.key === "k") select(at - 1);
      else if (e.key === "Enter" && at >= 0) window.location = rows[at].dataset.href;
    });
  }

  if (body.dataset.page !== "item") return;
  const item = body.dataset.item;

  // ---- claim: renew the hold while the page is open; disable the forms when it is lost ----
  function lost(holder) {
    document.querySelectorAll("#decide-recording input, #decide-recording button, .finding-decision button")
      .forEach((el) => { el.disabled = true; });
    const claim = document.getElementById("claim");
    if (claim) {
      claim.className = "claim other";
      claim.dataset.mine = "false";
      claim.textContent = holder ? "Claimed by " + holder + ": you can look, but not decide."
                                 : "Your hold ran out: reload the page to take the recording again.";
    }
  }
  if (body.dataset.mine === "true") {
    const every = Math.max(5000, Number(body.dataset.leaseMs || 300000) / 3);
    setInterval(() => {
      post("/review/items/" + item + "/claim").then((r) => r.json().then((j) => {
        if (!r.ok || !j.mine) lost(j.holder);
        else {
          const until = document.getElementById("claim-until");
          if (until) until.textContent = new Date(j.until_ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
        }
      })).catch(() => {});
    }, every);
  }

  // ---- evidence: the original only on reveal (logged by the server) ----
  // Findings may share a file (two rules on one slide): one fetch per evidence id, shown in
  // every place that file appears.
  const revealed = new Map();
  function reveal(button) {
    const id = button.dataset.evidence;
    if (revealed.has(id)) return revealed.get(id);
    const buttons = Array.from(document.querySelectorAll('button.reveal[data-evidence="' + id + '"]'));
    buttons.forEach((b) => { b.disabled = true; });
    const done = post("/review/evidence/" + id + "/reveal").then((r) => {
      if (!r.ok) throw new Error("reveal refused: " + r.status);
      return r.blob();
    }).then((blob) => {
      const url = URL.createObjectURL(blob);
      document.querySelectorAll('img[data-evidence="' + id + '"]').forEach((img) => {
        img.src = url;
        img.dataset.state = "revealed";
        img.alt = "slice, original";
      });
      document.querySelectorAll('audio[data-evidence="' + id + '"]').forEach((audio) => {
        audio.src = url;
        audio.muted = false;
        audio.dataset.state = "revealed";
      });
      buttons.forEach((b) => { b.textContent = "Revealed"; });
    }).catch((err) => {
      revealed.delete(id);
      buttons.forEach((b) => { b.disabled = false; b.textContent = String(err.message || err); });
    });
    revealed.set(id, done);
    return done;
  }
  const revealButtons = Array.from(document.querySelectorAll("button.reveal"));
  revealButtons.forEach((b) => b.addEventListener("click", () => reveal(b)));
  if (body.dataset.revealDefault === "true") revealButtons.forEach(reveal);

  // ---- the recording's decision: c / x, 1-9 for the reason, Enter ----
  const form = document.getElementById("decide-recording");
  const reason = document.getElementById("reason");
  function choose(kind) {
    const radio = document.getElementById("action-" + kind);
    if (!radio || radio.disabled) return;
    radio.checked = true;
    Array.from(reason.options).forEach((o) => {
      o.hidden = o.value !== "" && o.dataset.kind !== kind;
    });
    Array.from(reason.querySelectorAll("optgroup")).forEach((g) => { g.hidden = g.label !== kind; });
    if (reason.selectedOptions[0] && reason.selectedOptions[0].hidden) reason.value = "";
  }
  if (form) {
    form.querySelectorAll('input[name="action"]').forEach((r) => r.addEventListener("change", () => choose(r.value)));
  }
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (typing(e)) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (e.key === "r") { revealButtons.forEach(reveal); return; }
    if (!form) return;
    const action = form.querySelector('input[name="action"]:checked');
    if (e.key === "c") choose("confirm");
    else if (e.key === "x") choose("dismiss");
    else if (e.key === "n") { e.preventDefault(); document.getElementById("note").focus(); }
    else if (/^[1-9]$/.test(e.key) && action) {
      const options = Array.from(reason.options).filter((o) => o.value !== "" && o.dataset.kind === action.value);
      const pick = options[Number(e.key) - 1];
      if (pick) reason.value = pick.value;
    } else if (e.key === "Enter" && action && reason.value) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
})();

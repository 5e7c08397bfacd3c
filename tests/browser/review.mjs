// Drives the review page of a running `classguard serve` with Debian's headless Chromium
// (playwright-core, no bundled browser). Run by tests/review_browser.rs, which starts the server,
// seeds it and checks the store afterwards; this script prints one JSON object of what it saw.
//
// env: BASE, REC_WHITEBOARD, REC_SPEECH, PW_ALICE, PW_BOB, PW_LEA, PW_CAROL, PW_ROOT, SCREENSHOTS (a folder)
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing ${k}`);
  return v;
};
const BASE = env("BASE");
const SHOTS = env("SCREENSHOTS");
const result = {};
const step = (s) => process.stderr.write(`review.mjs: ${s}\n`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

async function signIn(name, password) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${BASE}/review/login`);
  await page.fill('input[name="username"]', name);
  await page.fill('input[name="password"]', password);
  await Promise.all([page.waitForURL(`${BASE}/review`), page.click('#login button[type="submit"]')]);
  return { context, page };
}

// The queue row of a recording, and the item page it links to.
async function openItem(page, recording) {
  await page.goto(`${BASE}/review?state=all`);
  const row = page.locator("#queue tbody tr", { hasText: recording });
  assert.equal(await row.count(), 1, `queue lists ${recording}`);
  const id = await row.getAttribute("data-item");
  await Promise.all([page.waitForURL(`${BASE}/review/items/${id}`), row.locator("a.open-item").click()]);
  return id;
}

const csrfOf = (page) => page.locator('meta[name="csrf-token"]').getAttribute("content");

try {
  // ---- signed out: pages go to the sign-in page, everything else is refused ----
  step("signed out");
  const anon = await browser.newContext();
  const anonPage = await anon.newPage();
  await anonPage.goto(`${BASE}/review`);
  assert.equal(anonPage.url(), `${BASE}/review/login`);
  assert.equal(await anonPage.locator("#login").count(), 1);
  let r = await anon.request.get(`${BASE}/review/items/1`, { maxRedirects: 0 });
  assert.equal(r.status(), 303);
  assert.equal(r.headers()["location"], "/review/login");
  r = await anon.request.post(`${BASE}/review/items/1/decide`, {
    form: { version: "1", target: "recording", action: "dismiss", reason: "false_positive" },
  });
  assert.equal(r.status(), 401);
  result.signed_out_decide = r.status();

  // ---- alice: the queue in severity order ----
  step("alice signs in");
  const alice = await signIn("alice", env("PW_ALICE"));
  const a = alice.page;
  const severities = await a.locator("#queue tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.severity));
  const rank = { critical: 4, high: 3, medium: 2, low: 1, info: 0, none: -1 };
  assert.ok(severities.length >= 3, `queue has the seeded items: ${severities}`);
  for (let i = 1; i < severities.length; i++) {
    assert.ok(rank[severities[i - 1]] >= rank[severities[i]], `severity order: ${severities}`);
  }
  result.queue_severities = severities;
  assert.ok((await a.locator("#label-counts a.count").count()) >= 2, "counts per label");
  await a.screenshot({ path: `${SHOTS}/review-queue.png`, fullPage: true });
  // A filter narrows the queue to one label.
  await a.selectOption("#filter-label", "contact_info");
  await Promise.all([a.waitForURL(/label=contact_info/), a.click('#filters button[type="submit"]')]);
  const filtered = await a.locator("#queue tbody tr td:nth-child(3)").allTextContents();
  assert.ok(filtered.length >= 1 && filtered.every((t) => t.includes("contact_info")), `filtered: ${filtered}`);
  result.filtered_rows = filtered.length;

  // ---- alice opens the whiteboard recording: claimed, evidence blurred and grey ----
  step("alice opens the whiteboard item");
  const wb = await openItem(a, env("REC_WHITEBOARD"));
  result.whiteboard_item = wb;
  assert.equal(await a.locator("#claim").getAttribute("data-mine"), "true");
  const img = a.locator("img.evidence").first();
  await img.waitFor();
  await a.waitForFunction(() => {
    const i = document.querySelector("img.evidence");
    return i && i.complete && i.naturalWidth > 0;
  });
  const blurred = await img.evaluate((el) => {
    const c = document.createElement("canvas");
    c.width = el.naturalWidth;
    c.height = el.naturalHeight;
    const g = c.getContext("2d");
    g.drawImage(el, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let colour = 0;
    for (let i = 0; i < d.length; i += 4) colour = Math.max(colour, Math.abs(d[i] - d[i + 1]), Math.abs(d[i + 1] - d[i + 2]));
    return { width: el.naturalWidth, colour, state: el.dataset.state };
  });
  assert.equal(blurred.state, "blurred");
  assert.ok(blurred.width <= 320, `rendition is downscaled: ${blurred.width}`);
  assert.ok(blurred.colour <= 2, `rendition is grey: channel spread ${blurred.colour}`);
  result.evidence_id = await img.getAttribute("data-evidence");
  // The page's keep-alive renews the holder's lease.
  r = await alice.context.request.post(`${BASE}/review/items/${wb}/claim`, { headers: { "X-CSRF-Token": await csrfOf(a) } });
  assert.equal(r.status(), 200);
  assert.equal((await r.json()).mine, true);
  await a.screenshot({ path: `${SHOTS}/review-item.png`, fullPage: true });

  // The blurred rendition needs a session; the original needs a session and the CSRF token.
  r = await anon.request.get(`${BASE}/review/evidence/${result.evidence_id}`);
  assert.equal(r.status(), 401, "signed-out evidence");
  r = await anon.request.post(`${BASE}/review/evidence/${result.evidence_id}/reveal`);
  assert.equal(r.status(), 401, "signed-out reveal");
  r = await alice.context.request.post(`${BASE}/review/evidence/${result.evidence_id}/reveal`);
  assert.equal(r.status(), 403, "reveal without the CSRF token");
  result.signed_out_evidence = 401;

  step("alice reveals the thumbnail");
  await a.locator('button.reveal[data-kind="image"]').first().click();
  await a.waitForFunction(() => document.querySelector("img.evidence").dataset.state === "revealed");
  await a.waitForFunction(() => document.querySelector("img.evidence").naturalWidth > 320);
  const revealed = await img.evaluate((el) => ({ src: el.src.slice(0, 5), width: el.naturalWidth }));
  assert.equal(revealed.src, "blob:");
  assert.ok(revealed.width > blurred.width, "the original is the full slice");
  result.revealed_width = revealed.width;

  // ---- bob: sees the item claimed and cannot decide it ----
  step("bob is refused the claimed item");
  const bob = await signIn("bob", env("PW_BOB"));
  await bob.page.goto(`${BASE}/review/items/${wb}`);
  assert.equal(await bob.page.locator("#claim").getAttribute("data-mine"), "false");
  assert.match(await bob.page.locator("#claim").textContent(), /Claimed by alice/);
  assert.ok(await bob.page.locator("#submit-decision").isDisabled());
  const bobVersion = await bob.page.locator("#version").textContent();
  r = await bob.context.request.post(`${BASE}/review/items/${wb}/decide`, {
    form: { csrf: await csrfOf(bob.page), version: bobVersion, target: "recording", action: "dismiss", reason: "false_positive" },
    maxRedirects: 0,
  });
  assert.equal(r.status(), 409, "a second reviewer cannot decide a claimed item");
  r = await bob.context.request.post(`${BASE}/review/items/${wb}/claim`, { headers: { "X-CSRF-Token": await csrfOf(bob.page) } });
  assert.equal(r.status(), 409);
  result.second_reviewer = 409;
  // Bob's own setting: evidence revealed without a click (each view still logged).
  await bob.page.goto(`${BASE}/review/settings`);
  await bob.page.check('input[name="reveal_default"]');
  await Promise.all([bob.page.waitForURL(`${BASE}/review/settings`), bob.page.click('#settings button[type="submit"]')]);
  assert.ok(await bob.page.isChecked('input[name="reveal_default"]'));
  await bob.page.goto(`${BASE}/review/items/${wb}`);
  await bob.page.waitForFunction(() =>
    Array.from(document.querySelectorAll("img.evidence")).every((i) => i.dataset.state === "revealed"));
  result.bob_auto_revealed = await bob.page.locator('img.evidence[data-state="revealed"]').count();

  // ---- a CSRF-less post is refused ----
  r = await alice.context.request.post(`${BASE}/review/items/${wb}/decide`, {
    form: { version: "1", target: "recording", action: "confirm", reason: "off_platform_contact" },
    maxRedirects: 0,
  });
  assert.equal(r.status(), 403, "no CSRF token");
  r = await alice.context.request.post(`${BASE}/review/items/${wb}/decide`, {
    form: { csrf: "0".repeat(64), version: "1", target: "recording", action: "confirm", reason: "off_platform_contact" },
    maxRedirects: 0,
  });
  assert.equal(r.status(), 403, "wrong CSRF token");
  result.csrf_less = 403;

  // ---- a stale decision: the page saw version 1, a finding was decided meanwhile ----
  step("stale decision");
  const a2 = await alice.context.newPage();
  await a2.goto(`${BASE}/review/items/${wb}`);
  const firstFinding = a2.locator("form.finding-decision").first();
  await firstFinding.locator("select").selectOption("false_positive");
  await Promise.all([a2.waitForURL(`${BASE}/review/items/${wb}`), firstFinding.locator('button[value="dismiss"]').click()]);
  assert.equal(await a2.locator("#version").textContent(), "2");
  await a.bringToFront();
  await a.locator("body").click({ position: { x: 5, y: 5 } });
  await a.keyboard.press("c");
  await a.keyboard.press("1");
  const [stale] = await Promise.all([a.waitForNavigation(), a.keyboard.press("Enter")]);
  assert.equal(stale.status(), 409, "stale decision refused");
  assert.match(await a.locator("#error").textContent(), /changed since you opened it/);
  result.stale = 409;

  // ---- decide with the keyboard, then see it in the history ----
  step("keyboard decision");
  await a.goto(`${BASE}/review/items/${wb}`);
  await a.locator("body").click({ position: { x: 5, y: 5 } });
  await a.keyboard.press("c");
  await a.keyboard.press("1");
  assert.equal(await a.locator("#reason").inputValue(), "off_platform_contact");
  const [done] = await Promise.all([a.waitForNavigation(), a.keyboard.press("Enter")]);
  assert.equal(done.status(), 200, "after the 303");
  assert.equal(await a.locator("#human-decision").textContent(), "block");
  const history = await a.locator("#history tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.action));
  assert.deepEqual(history, ["dismiss", "confirm"]);
  assert.match(await a.locator("#history tbody tr").last().textContent(), /alice.*confirm.*recording.*off_platform_contact/s);
  result.history = history;

  // ---- the speech recording: audio only on reveal, dismissed with the mouse ----
  step("speech item");
  const sp = await openItem(a, env("REC_SPEECH"));
  result.speech_item = sp;
  const audio = a.locator("audio[data-evidence]").first();
  assert.equal(await audio.getAttribute("src"), null, "no audio before reveal");
  assert.equal(await audio.evaluate((el) => el.muted), true);
  await a.locator('button.reveal[data-kind="audio"]').first().click();
  await a.waitForFunction(() => document.querySelector("audio[data-evidence]").dataset.state === "revealed");
  assert.equal(await audio.evaluate((el) => el.muted), false);
  assert.match(await audio.evaluate((el) => el.src), /^blob:/);
  await a.check("#action-dismiss");
  await a.selectOption("#reason", "false_positive");
  await a.fill("#note", "teacher's own lesson example");
  await Promise.all([a.waitForURL(`${BASE}/review/items/${sp}`), a.click("#submit-decision")]);
  assert.equal(await a.locator("#human-decision").textContent(), "pass");

  // ---- roles: metrics are for leads; a lead reopens (appeal) ----
  r = await alice.context.request.get(`${BASE}/review/metrics`);
  assert.equal(r.status(), 403, "reviewers see no metrics");
  step("lead reopens");
  const lea = await signIn("lea", env("PW_LEA"));
  await lea.page.goto(`${BASE}/review/items/${wb}`);
  await lea.page.selectOption("#reopen-reason", "appeal_received");
  await Promise.all([lea.page.waitForURL(`${BASE}/review/items/${wb}`), lea.page.click('#reopen-form button[type="submit"]')]);
  assert.equal(await lea.page.locator("#claim").getAttribute("data-mine"), "true", "reopened and open again");
  await lea.page.goto(`${BASE}/review/metrics`);
  assert.equal(await lea.page.locator("#m-decided").textContent(), "2");
  assert.equal(await lea.page.locator("#m-reopened").textContent(), "1");
  await lea.page.goto(`${BASE}/review/audit`);
  assert.ok((await lea.page.locator('#audit tr[data-action="evidence_viewed"]').count()) >= 2);

  // ---- lockout: five wrong passwords, then even the right one is refused ----
  step("lockout");
  const c = await browser.newContext();
  const cp = await c.newPage();
  for (let i = 0; i < 5; i++) {
    await cp.goto(`${BASE}/review/login`);
    await cp.fill('input[name="username"]', "carol");
    await cp.fill('input[name="password"]', `wrong password ${i}`);
    await Promise.all([cp.waitForNavigation(), cp.click('#login button[type="submit"]')]);
  }
  await cp.goto(`${BASE}/review/login`);
  await cp.fill('input[name="username"]', "carol");
  await cp.fill('input[name="password"]', env("PW_CAROL"));
  const [locked] = await Promise.all([cp.waitForNavigation(), cp.click('#login button[type="submit"]')]);
  assert.equal(locked.status(), 429);
  assert.match(await cp.locator("#login-error").textContent(), /locked/);
  result.lockout = 429;
  // An admin unlocks the account; then the right password works.
  const root = await signIn("root", env("PW_ROOT"));
  await root.page.goto(`${BASE}/review/users`);
  const carolRow = root.page.locator("#users tbody tr", { hasText: "carol" });
  assert.match(await carolRow.textContent(), /locked until/);
  await Promise.all([root.page.waitForURL(`${BASE}/review/users`), carolRow.locator('button', { hasText: "Unlock" }).click()]);
  assert.match(await root.page.locator("#users tbody tr", { hasText: "carol" }).textContent(), /active/);
  r = await lea.context.request.get(`${BASE}/review/users`);
  assert.equal(r.status(), 403, "leads do not manage accounts");
  await cp.goto(`${BASE}/review/login`);
  await cp.fill('input[name="username"]', "carol");
  await cp.fill('input[name="password"]', env("PW_CAROL"));
  await Promise.all([cp.waitForURL(`${BASE}/review`), cp.click('#login button[type="submit"]')]);
  result.unlocked = true;

  // ---- sign out ends the session ----
  step("sign out");
  await Promise.all([a.waitForURL(`${BASE}/review/login`), a.click("#sign-out")]);
  await a.goto(`${BASE}/review`);
  assert.equal(a.url(), `${BASE}/review/login`);
  result.signed_out_after_logout = true;
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + "\n");

// Drives one SMART launch in headless Chromium (Debian's, through playwright-core) and prints
// what the test app observed as one JSON line on stdout.
//
//   node tests/e2e/drive.mjs '<json>'
//
// json: {
//   start:     URL the browser opens first (the app's launch.html, or the EHR launcher),
//   appOrigin: URL prefix of the app (the run ends when its page sets window.E2E_RESULT or,
//              with doneSelector, shows that element: the result is then the page's text),
//   startClick: selector to click once the start page has loaded (e.g. a "sign in" button),
//   doneSelector: see appOrigin,
//   username, password: the account to sign in with on the login page,
//   deselect:  scope strings to untick on the approval page (limited access),
//   ehr:       {client_id, patient, encounter}: what to pick on the EHR launcher page,
//   timeoutMs: overall limit (default 60000)
// }
//
// Page contract (app/auth/templates): login has input[name=username], input[name=password] and
// button[type=submit]; approval has input[name=scope] checkboxes and
// button[name=decision][value=approve]; the EHR launcher has select[name=client_id],
// select[name=patient], select[name=encounter]. The driver reacts to whichever page is shown, so
// it works whether or not the server asks for approval on an EHR launch.
import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2] || "{}");
const timeoutMs = config.timeoutMs || 60000;
const deadline = Date.now() + timeoutMs;
const trail = [];
const consoleLines = [];

function output(result) {
  process.stdout.write(JSON.stringify({ ...result, trail, console: consoleLines.slice(-40) }) + "\n");
}

async function pickOption(page, name, value) {
  const select = page.locator(`select[name="${name}"]`);
  if ((await select.count()) === 0 || value === undefined || value === null) return false;
  // The option's value may be the id or the reference ("Patient/pat-000001").
  const values = await select.locator("option").evaluateAll((os) => os.map((o) => o.value));
  const match = values.find((v) => v === value || v.endsWith("/" + value));
  if (match === undefined) return false;
  const current = await select.inputValue();
  if (current !== match) await select.selectOption(match);
  return true;
}

async function step(page, done) {
  const url = page.url();
  if (url.startsWith(config.appOrigin)) {
    if (config.doneSelector) {
      if ((await page.locator(config.doneSelector).count()) > 0) {
        await page.waitForLoadState("networkidle").catch(() => {});
        return done({ url, text: await page.locator("body").innerText() });
      }
    } else {
      const result = await page.evaluate(() => window.E2E_RESULT || null);
      if (result) return done(result);
    }
    await page.waitForTimeout(200);
    return;
  }
  if ((await page.locator('input[name="password"]').count()) > 0) {
    trail.push({ page: "login", url });
    if (trail.filter((t) => t.page === "login").length > 2) {
      throw new Error("the login page came back after signing in twice (wrong password?)");
    }
    await page.fill('input[name="username"]', config.username);
    await page.fill('input[name="password"]', config.password);
    await Promise.all([page.waitForNavigation({ timeout: 20000 }).catch(() => {}),
                       page.click('button[type="submit"]')]);
    return;
  }
  const approve = page.locator('button[name="decision"][value="approve"]');
  if ((await approve.count()) > 0) {
    const offered = await page.locator('input[name="scope"]').evaluateAll(
      (inputs) => inputs.map((i) => ({ value: i.value, checked: i.checked })));
    trail.push({ page: "approve", url, offered });
    if (trail.filter((t) => t.page === "approve").length > 2) {
      throw new Error("the approval page came back after approving twice");
    }
    for (const scope of config.deselect || []) {
      const box = page.locator(`input[name="scope"][value="${scope}"]`);
      if ((await box.count()) === 0) {
        throw new Error(`the approval page offers no checkbox for ${scope}`);
      }
      await box.uncheck();
    }
    await Promise.all([page.waitForNavigation({ timeout: 20000 }).catch(() => {}),
                       approve.click()]);
    return;
  }
  if ((await page.locator('select[name="client_id"]').count()) > 0 && config.ehr) {
    trail.push({ page: "ehr", url });
    const ehr = config.ehr;
    await pickOption(page, "client_id", ehr.client_id);
    const patientPicked = await pickOption(page, "patient", ehr.patient);
    const encounterPicked = await pickOption(page, "encounter", ehr.encounter);
    // A launcher that lists a patient's encounters only after the patient is chosen: submit the
    // patient first, then pick the encounter on the next rendering.
    const submit = page.locator('form:has(select[name="client_id"]) button[type="submit"]').first();
    if (!patientPicked) throw new Error(`the EHR launcher offers no patient ${ehr.patient}`);
    if (ehr.encounter && !encounterPicked) trail.push({ page: "ehr", note: "encounter not offered yet" });
    await Promise.all([page.waitForNavigation({ timeout: 20000 }).catch(() => {}), submit.click()]);
    return;
  }
  await page.waitForTimeout(200);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.YILIAN_CHROMIUM || "/usr/bin/chromium",
    headless: true,
  });
  let finished = null;
  let page;
  try {
    const context = await browser.newContext({ locale: "zh-CN" });
    page = await context.newPage();
    page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
    page.on("request", (r) => {
      if (r.method() === "POST" && r.isNavigationRequest()) {
        consoleLines.push(`navigation POST ${r.url()} origin=${r.headers()["origin"]}`);
      }
    });
    page.on("requestfailed", (r) => consoleLines.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure() && r.failure().errorText}`));
    await page.goto(config.start, { waitUntil: "load" });
    if (config.startClick) {
      await Promise.all([page.waitForNavigation({ timeout: 20000 }).catch(() => {}),
                         page.click(config.startClick)]);
    }
    let lastUrl = "";
    let samePage = 0;
    while (!finished && Date.now() < deadline) {
      await page.waitForLoadState("load").catch(() => {});
      const url = page.url();
      samePage = url === lastUrl ? samePage + 1 : 0;
      lastUrl = url;
      if (samePage > 150) break; // ~30 s on one page without progress
      if (samePage > 25 && (await page.locator("form").count()) === 0 &&
          !url.startsWith(config.appOrigin)) break; // an error page of ours: nothing to do
      try {
        await step(page, (result) => { finished = result; });
      } catch (error) {
        if (/Execution context was destroyed|navigation/i.test(String(error))) continue;
        throw error;
      }
    }
    if (finished) {
      output({ ok: true, result: finished });
    } else {
      output({ ok: false, error: "no result before the timeout", url: page.url(),
               text: (await page.locator("body").innerText().catch(() => "")).slice(0, 2000) });
    }
  } catch (error) {
    output({ ok: false, error: String(error && error.stack || error), url: page && page.url(),
             text: page ? (await page.locator("body").innerText().catch(() => "")).slice(0, 2000) : "" });
  } finally {
    await browser.close();
  }
}

await main();

// Open a study notebook in JupyterLab and check that its answer cells are collapsed: their text
// is not on the page until the learner clicks the cell's placeholder, and then it is. Prints one
// JSON line with what it saw; exits non-zero on failure.
//
// Environment: PLAYWRIGHT_CORE, CHROMIUM, LAB_URL, LAB_TOKEN, USER_DATA_DIR, SCREENSHOT (as
// lab_run_cell.js), NOTEBOOK (its path under the server's root), ANSWER (a phrase of the first
// answer) and VISIBLE (a phrase of a markdown cell that is not hidden).
"use strict";

const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

async function main() {
  const env = process.env;
  const context = await chromium.launchPersistentContext(env.USER_DATA_DIR, {
    executablePath: env.CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 800 },
  });
  const seen = { console: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(60000);
    page.on("console", (msg) => { if (msg.type() === "error") seen.console.push(msg.text()); });
    await page.goto(`${env.LAB_URL}/lab/tree/${env.NOTEBOOK}?token=${env.LAB_TOKEN}`);
    const panel = page.locator(".jp-NotebookPanel").first();
    await panel.waitFor({ state: "visible" });
    // The notebook is rendered once its visible markdown is.
    await panel.locator(".jp-MarkdownCell", { hasText: env.VISIBLE }).first().waitFor({ state: "visible" });
    seen.cells = await panel.locator(".jp-Cell").count();
    seen.placeholders = await panel.locator(".jp-MarkdownCell .jp-InputPlaceholder").allInnerTexts();
    const answer = panel.locator(".jp-RenderedMarkdown", { hasText: env.ANSWER }).filter({ visible: true });
    seen.answerShownBefore = await answer.count();
    await panel.locator(".jp-MarkdownCell .jp-InputPlaceholder").first().scrollIntoViewIfNeeded();
    await page.screenshot({ path: env.SCREENSHOT });
    // A click on the placeholder (or the collapser bar to its left) opens the cell.
    await panel.locator(".jp-MarkdownCell .jp-InputPlaceholder").first().click();
    await answer.first().waitFor({ state: "visible", timeout: 15000 });
    seen.answerShownAfter = await answer.count();
    seen.placeholdersAfter = await panel.locator(".jp-MarkdownCell .jp-InputPlaceholder").count();
    seen.ok = true;
  } catch (err) {
    seen.ok = false;
    seen.error = String(err && err.stack || err);
    try {
      const page = context.pages()[0];
      if (page) await page.screenshot({ path: env.SCREENSHOT });
    } catch (_) { /* the failure is already reported */ }
  } finally {
    await context.close();
  }
  process.stdout.write(JSON.stringify(seen) + "\n");
  process.exit(seen.ok ? 0 : 1);
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.stack || err) }) + "\n");
  process.exit(1);
});

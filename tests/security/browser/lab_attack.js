// Open a notebook in JupyterLab (headless Chromium), run its cells, and report whether any of
// the sandbox's active content ran: globals named __pwned_*, requests whose URL says "pwned",
// dialogs. Links whose text is "click-me" are clicked. Prints one JSON line.
//
// Environment: PLAYWRIGHT_CORE, CHROMIUM, LAB_URL, LAB_TOKEN, USER_DATA_DIR, SCREENSHOT,
// NOTEBOOK (path relative to the server root), WORKSPACE (a JupyterLab workspace name), KERNEL_DISPLAY_NAME, EXPECT (text that marks the
// end of the cell's output).
"use strict";

const { chromium } = require(process.env.PLAYWRIGHT_CORE);

async function main() {
  const env = process.env;
  const context = await chromium.launchPersistentContext(env.USER_DATA_DIR, {
    executablePath: env.CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 1000 },
  });
  const seen = { requests: [], dialogs: [], console: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(60000);
    // Requests from the page and from any frame it opens (iframes share the context).
    context.on("request", (req) => { if (/pwned/i.test(req.url())) seen.requests.push(req.url()); });
    page.on("dialog", async (d) => { seen.dialogs.push(d.message()); await d.dismiss(); });
    page.on("console", (msg) => { if (msg.type() === "error") seen.console.push(msg.text().slice(0, 200)); });
    // A workspace of its own (reset): no tab of an earlier run is restored beside this one.
    await page.goto(`${env.LAB_URL}/lab/workspaces/${env.WORKSPACE}/tree/${env.NOTEBOOK}?reset&token=${env.LAB_TOKEN}`);
    const panel = page.locator(".jp-NotebookPanel").first();
    await panel.waitFor({ state: "visible" });
    await page.locator(".jp-StatusBar-Widget", { hasText: `${env.KERNEL_DISPLAY_NAME} | Idle` }).first()
      .waitFor({ state: "visible", timeout: 90000 });
    await panel.locator(".jp-Cell").first().locator(".jp-InputPrompt").click();
    await page.keyboard.press("Shift+Enter");
    const output = panel.locator(".jp-Cell").first().locator(".jp-OutputArea-output");
    await output.filter({ hasText: env.EXPECT }).first().waitFor({ state: "visible", timeout: 90000 });
    // Give scripts, handlers, image errors and iframes time to fire; then click every link.
    await page.waitForTimeout(1500);
    for (const link of await page.locator(".jp-OutputArea-output a", { hasText: "click-me" }).all()) {
      try { await link.click({ timeout: 2000, noWaitAfter: true }); } catch (_) { /* not clickable */ }
    }
    await page.waitForTimeout(1500);
    seen.globals = await page.evaluate(() => Object.keys(window).filter((k) => k.startsWith("__pwned")));
    seen.text = (await output.allInnerTexts()).join("\n");
    seen.tables = await page.locator(".jp-OutputArea-output table.dataframe").count();
    seen.pngs = await page.evaluate(() => Array.from(document.querySelectorAll(".jp-OutputArea-output img"))
      .filter((img) => img.src.startsWith("data:image/png") && img.naturalWidth > 0).length);
    seen.iframes = await page.locator(".jp-OutputArea-output iframe").count();
    seen.scripts = await page.locator(".jp-OutputArea-output script").count();
    seen.url = page.url();
    await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
    seen.ok = true;
  } catch (err) {
    seen.ok = false;
    seen.error = String((err && err.stack) || err);
    try { await context.pages()[0].screenshot({ path: env.SCREENSHOT }); } catch (_) { /* reported */ }
  } finally {
    await context.close();
  }
  process.stdout.write(JSON.stringify(seen) + "\n");
  process.exit(seen.ok ? 0 : 1);
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String((err && err.stack) || err) }) + "\n");
  process.exit(1);
});

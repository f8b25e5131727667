// Drive JupyterLab in headless Chromium like a person: open the launcher, click the
// "Sandbox (Python)" notebook tile, type a cell, run it with Shift+Enter, wait for its output,
// and keep a screenshot. Prints one JSON line with what it saw; exits non-zero on failure.
//
// Environment: PLAYWRIGHT_CORE (path of the playwright-core package), CHROMIUM (the browser),
// LAB_URL (JupyterLab's base URL), LAB_TOKEN, USER_DATA_DIR, SCREENSHOT (PNG path),
// KERNEL_DISPLAY_NAME (the launcher tile), CODE (the cell), EXPECT (text awaited in its output) and
// optionally EXPECT_IMAGES (how many images, e.g. plots, the output must show).
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
    await page.goto(`${env.LAB_URL}/lab?token=${env.LAB_TOKEN}`);

    // The launcher lists every kernelspec twice (Notebook and Console); take the notebook tile.
    const tile = page.locator('.jp-LauncherCard[data-category="Notebook"]', { hasText: env.KERNEL_DISPLAY_NAME });
    await tile.first().waitFor({ state: "visible" });
    seen.tiles = await page.locator('.jp-LauncherCard[data-category="Notebook"]').allInnerTexts();
    await tile.first().click();

    const panel = page.locator(".jp-NotebookPanel").first();
    await panel.waitFor({ state: "visible" });
    // Like a person, wait until the status bar says the kernel is idle: JupyterLab silently
    // skips a cell run before its new kernel has connected (ipykernel's too).
    await page.locator(".jp-StatusBar-Widget", { hasText: `${env.KERNEL_DISPLAY_NAME} | Idle` }).first()
      .waitFor({ state: "visible", timeout: 90000 });
    const editor = panel.locator(".jp-Cell").first().locator(".cm-content");
    await editor.click();
    await page.keyboard.type(env.CODE);
    seen.typed = await editor.innerText();
    await page.keyboard.press("Shift+Enter");

    const output = panel.locator(".jp-Cell").first().locator(".jp-OutputArea-output");
    await output.filter({ hasText: env.EXPECT }).first().waitFor({ state: "visible", timeout: 90000 });
    seen.output = (await output.allInnerTexts()).join("\n");
    if (env.EXPECT_IMAGES) {
      // Images (plots): as many <img> as expected, each loaded (a PNG the browser decoded).
      const images = panel.locator(".jp-Cell").first().locator(".jp-OutputArea-output img");
      await images.nth(Number(env.EXPECT_IMAGES) - 1).waitFor({ state: "visible", timeout: 90000 });
      await page.waitForFunction(() => [...document.querySelectorAll(".jp-NotebookPanel .jp-Cell .jp-OutputArea-output img")]
        .every((img) => img.complete && img.naturalWidth > 0));
      seen.images = await images.evaluateAll((imgs) => imgs.map((img) => ({
        type: img.src.slice(0, img.src.indexOf(";")), width: img.naturalWidth, height: img.naturalHeight })));
    }
    seen.kernel = (await panel.locator(".jp-KernelName, .jp-Toolbar-kernelName").first().innerText()).trim();
    // Let the execution count and kernel status settle before the picture is taken.
    await page.waitForFunction(() => {
      const prompt = document.querySelector(".jp-NotebookPanel .jp-Cell .jp-InputPrompt");
      return prompt && /\[\d+\]/.test(prompt.textContent);
    });
    seen.prompt = (await panel.locator(".jp-Cell").first().locator(".jp-InputPrompt").innerText()).trim();
    await page.screenshot({ path: env.SCREENSHOT });
    seen.ok = true;
  } catch (err) {
    seen.ok = false;
    seen.error = String(err && err.stack || err);
    try {
      const page = context.pages()[0];
      if (page) {
        // What the page shows, to tell a slow kernel from a lost keystroke.
        seen.cells = await page.locator(".jp-NotebookPanel .jp-Cell").allInnerTexts();
        seen.status = await page.locator(".jp-StatusBar-Widget").allInnerTexts();
        await page.screenshot({ path: env.SCREENSHOT });
      }
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

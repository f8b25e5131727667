// Widgets and input() in JupyterLab (headless Chromium), as a person uses them: open a notebook,
// run its first cell (an ipywidgets IntSlider observed in the sandbox), drag the slider, run the
// second cell (prints the sandbox's value), run the third (a tqdm.notebook bar) and the fourth
// (input(), answered in JupyterLab's input box). Prints one JSON line; exits non-zero on failure.
//
// Environment: PLAYWRIGHT_CORE, CHROMIUM, LAB_URL, LAB_TOKEN, USER_DATA_DIR, SCREENSHOT (the final
// PNG; the slider's is SCREENSHOT with "-slider" before ".png"), NOTEBOOK (relative to the server
// root), KERNEL_DISPLAY_NAME, ANSWER (typed into the input box).
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
  const seen = { console: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(60000);
    page.on("console", (msg) => { if (msg.type() === "error") seen.console.push(msg.text().slice(0, 300)); });
    await page.goto(`${env.LAB_URL}/lab/workspaces/widgets/tree/${env.NOTEBOOK}?reset&token=${env.LAB_TOKEN}`);
    const panel = page.locator(".jp-NotebookPanel").first();
    await panel.waitFor({ state: "visible" });
    await page.locator(".jp-StatusBar-Widget", { hasText: `${env.KERNEL_DISPLAY_NAME} | Idle` }).first()
      .waitFor({ state: "visible", timeout: 90000 });
    const cells = panel.locator(".jp-CodeCell");
    const output = (i) => cells.nth(i).locator(".jp-OutputArea-output");
    const run = async (i) => {
      await cells.nth(i).locator(".jp-InputPrompt").click();
      await page.keyboard.press("Shift+Enter");
    };

    // 1. The slider renders from the sandbox's widget models.
    await run(0);
    const slider = cells.nth(0).locator(".widget-slider");
    await slider.waitFor({ state: "visible", timeout: 90000 });
    const readout = cells.nth(0).locator(".widget-readout");
    seen.before = (await readout.innerText()).trim();
    // Drag the handle to the right, as a person would.
    const handle = cells.nth(0).locator(".noUi-handle").first();
    const box = await handle.boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + 120, box.y + box.height / 2, { steps: 12 });
    await page.mouse.up();
    await page.waitForFunction((before) => {
      const r = document.querySelector(".jp-CodeCell .widget-readout");
      return r && r.textContent.trim() !== before;
    }, seen.before);
    seen.after = (await readout.innerText()).trim();
    await page.waitForTimeout(500); // the comm_msg reaches the sandbox between cells
    await page.screenshot({ path: env.SCREENSHOT.replace(/\.png$/, "-slider.png") });

    // 2. The sandbox's own state followed the slider.
    await run(1);
    await output(1).filter({ hasText: "value now" }).first().waitFor({ state: "visible", timeout: 60000 });
    seen.printed = (await output(1).allInnerTexts()).join("\n");

    // 3. A tqdm.notebook progress bar.
    await run(2);
    await output(2).filter({ hasText: "TQDM-DONE" }).first().waitFor({ state: "visible", timeout: 60000 });
    seen.progress_bars = await cells.nth(2).locator(".widget-hprogress, .widget-progress").count();
    seen.tqdm_text = (await output(2).allInnerTexts()).join("\n");

    // 4. input(): JupyterLab's input box, answered by typing.
    await run(3);
    const box4 = cells.nth(3).locator(".jp-Stdin-input");
    await box4.waitFor({ state: "visible", timeout: 60000 });
    seen.prompt = (await cells.nth(3).locator(".jp-Stdin-prompt").innerText()).trim();
    await box4.fill(env.ANSWER);
    await box4.press("Enter");
    await output(3).filter({ hasText: `hello ${env.ANSWER}` }).first().waitFor({ state: "visible", timeout: 60000 });
    seen.answered = (await output(3).allInnerTexts()).join("\n");
    await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
    seen.ok = true;
  } catch (err) {
    seen.ok = false;
    seen.error = String((err && err.stack) || err);
    try {
      const page = context.pages()[0];
      seen.cells = await page.locator(".jp-NotebookPanel .jp-CodeCell").allInnerTexts();
      await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
    } catch (_) { /* reported */ }
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

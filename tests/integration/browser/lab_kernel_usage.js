// JupyterLab with jupyter-resource-usage in headless Chromium: open a "Sandbox (Python)"
// notebook, run a cell that holds ALLOC_MIB MiB in the sandbox, open the "Kernel Usage" panel
// (right sidebar; fed by the kernel's usage_reply) and wait until it shows at least that much
// memory; read the status bar's "Mem:" item too; keep a screenshot. Prints one JSON line.
//
// Environment: PLAYWRIGHT_CORE, CHROMIUM, LAB_URL, LAB_TOKEN, USER_DATA_DIR, SCREENSHOT,
// KERNEL_DISPLAY_NAME, ALLOC_MIB.
"use strict";

const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

// "150.23 MB" as the extension writes it (its MB is 2^20 bytes) -> MiB.
function mib(text) {
  const m = /([\d.]+)\s*(B|KB|MB|GB|TB)/.exec(text || "");
  if (!m) return null;
  return parseFloat(m[1]) * { B: 1 / 1048576, KB: 1 / 1024, MB: 1, GB: 1024, TB: 1048576 }[m[2]];
}

async function main() {
  const env = process.env;
  const alloc = parseInt(env.ALLOC_MIB, 10);
  const context = await chromium.launchPersistentContext(env.USER_DATA_DIR, {
    executablePath: env.CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1400, height: 850 },
  });
  const seen = { console: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(60000);
    page.on("console", (msg) => { if (msg.type() === "error") seen.console.push(msg.text()); });
    await page.goto(`${env.LAB_URL}/lab?token=${env.LAB_TOKEN}`);
    const tile = page.locator('.jp-LauncherCard[data-category="Notebook"]', { hasText: env.KERNEL_DISPLAY_NAME });
    await tile.first().click();
    const panel = page.locator(".jp-NotebookPanel").first();
    await panel.waitFor({ state: "visible" });
    await page.locator(".jp-StatusBar-Widget", { hasText: `${env.KERNEL_DISPLAY_NAME} | Idle` }).first()
      .waitFor({ state: "visible", timeout: 90000 });
    const editor = panel.locator(".jp-Cell").first().locator(".cm-content");
    await editor.click();
    await page.keyboard.type(`x = b"a" * (${alloc} * 2**20); print("holding", len(x) >> 20, "MiB")`);
    await page.keyboard.press("Shift+Enter");
    const output = panel.locator(".jp-Cell").first().locator(".jp-OutputArea-output");
    await output.filter({ hasText: `holding ${alloc} MiB` }).first().waitFor({ state: "visible", timeout: 90000 });
    seen.output = (await output.allInnerTexts()).join("\n");

    // The panel's tab in the right sidebar (the extension adds the panel at start).
    await page.locator('.jp-SideBar.jp-mod-right .lm-TabBar-tab[data-id="kernelusage-panel-id"]').click();
    const usage = page.locator("#kernelusage-panel-id");
    await usage.waitFor({ state: "visible" });
    const row = (label) => usage.locator(".jp-KernelUsage-separator", { hasText: label }).first();
    // It polls every 5 s: wait for a reply taken after the cell ran.
    const deadline = Date.now() + 60000;
    for (;;) {
      seen.panel = await usage.innerText();
      seen.memory = await row("Memory:").innerText().catch(() => null);
      seen.memory_mib = mib(seen.memory);
      if (seen.memory_mib !== null && seen.memory_mib >= alloc) break;
      if (Date.now() > deadline) throw new Error(`the Kernel Usage panel never showed ${alloc} MiB: ${seen.panel}`);
      await page.waitForTimeout(1000);
    }
    seen.total = await row("Total:").innerText().catch(() => null);
    seen.total_mib = mib(seen.total);
    seen.available_mib = mib(await row("Available:").innerText().catch(() => null));
    seen.statusbar = await page.locator(".jp-StatusBar-Widget").allInnerTexts();
    const mem = seen.statusbar.find((t) => /Mem:/.test(t));
    seen.statusbar_mem = mem || null;
    seen.statusbar_mem_mib = mem ? mib(mem) : null;
    await page.screenshot({ path: env.SCREENSHOT });
    seen.ok = true;
  } catch (err) {
    seen.ok = false;
    seen.error = String(err && err.stack || err);
    try {
      const page = context.pages()[0];
      if (page) {
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

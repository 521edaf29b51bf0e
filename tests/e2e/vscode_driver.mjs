// Drives VS Code (code-server) in headless Chromium with playwright-core, for
// tests/e2e/test_vscode.py. Usage:
//   node vscode_driver.mjs <config.json>
// config: { playwrightCore, url, file, typeChunks, hoverWord, hoverLine, artifacts, timeoutMs, mode, instruction }
// mode: "startFailure" (a server that cannot start), "instruct" (Edit selection… with
// `instruction`), else typing, ghost text, Tab, hover, toggle and status.
// Writes a JSON result to stdout's last line: { ghostText, hoverText, screenshots }.

import { createRequire } from "node:module";
import { readFileSync, mkdirSync } from "node:fs";
import path from "node:path";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(path.join(cfg.playwrightCore, "package.json"));
const { chromium } = require(cfg.playwrightCore);

const log = (...a) => console.error(`[driver ${new Date().toISOString().slice(11, 23)}]`, ...a);
const timeout = cfg.timeoutMs ?? 120000;
mkdirSync(cfg.artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: cfg.chromium ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const result = { screenshots: [] };

/** Wait until the extension's status bar item says the server's model is loaded. */
async function waitForReady(page) {
  const serverState = await page.waitForFunction(
    () => {
      const item = [...document.querySelectorAll(".statusbar-item")].find((e) => /Code Llama/.test(e.textContent));
      if (!item) return null;
      if (item.querySelector(".codicon-check, .codicon-sparkle")) return "ready";
      if (item.querySelector(".codicon-error")) return `error: ${item.getAttribute("aria-label") ?? item.textContent}`;
      return null;
    },
    null,
    { timeout },
  );
  const state = await serverState.jsonValue();
  log("server", state);
  if (state !== "ready") {
    throw new Error(`the extension reports a server ${state}`);
  }
}

/** Run the command titled `title` from the Command Palette. */
async function fromPalette(page, quickInput, title) {
  await page.keyboard.press("Control+Shift+P");
  await quickInput.waitFor({ state: "visible" });
  await quickInput.fill(`>${title}`);
  const name = title.split(": ").pop();
  await page.locator(".quick-input-list .monaco-list-row", { hasText: name }).first().waitFor({ state: "visible" });
  await page.keyboard.press("Enter");
}

/**
 * "Edit selection…" on the whole file, from the Command Palette's "Refactor...": the input
 * box takes the instruction, and the server's edit lands in the editor, which is saved. Then
 * "Explain", whose answer opens as a markdown preview.
 */
async function instructEdit(page, editor, quickInput) {
  result.actions = await refactor(page, editor, quickInput, "Edit selection", (timeout) =>
    page.locator(".quick-input-widget", { hasText: "How should the selected code change?" }).waitFor({ state: "visible", timeout }));
  log("code actions", JSON.stringify(result.actions));
  await quickInput.fill(cfg.instruction);
  await page.keyboard.press("Enter");
  await page.locator(".tab.active.dirty").waitFor({ state: "visible" }); // the edit was applied
  await page.keyboard.press("Control+S");
  await page.locator(".tab.active.dirty").waitFor({ state: "detached", timeout: 15000 });
  log("edited and saved");
  const shot = path.join(cfg.artifacts, "vscode-instruct.png");
  await page.screenshot({ path: shot });
  result.screenshots.push(shot);

  // "Explain" on the whole (edited) file: the answer opens as a markdown preview beside the code.
  // A selection, not the cursor: at a cursor the action is offered only inside a definition,
  // and where the model's edit put one differs between CPUs.
  await refactor(page, editor, quickInput, "Explain", (timeout) =>
    page.locator(".tab", { hasText: "Untitled-1" }).first().waitFor({ state: "visible", timeout }));
  log("explanation opened; waiting for its preview");
  const preview = page.locator(".tab", { hasText: "Preview" }).first();
  await preview.waitFor({ state: "visible" });
  result.previewTab = await preview.innerText();
  log("explanation shown in", JSON.stringify(result.previewTab));
  const shot2 = path.join(cfg.artifacts, "vscode-explain.png");
  await page.screenshot({ path: shot2 });
  result.screenshots.push(shot2);
}

/**
 * "Refactor..." on the whole file, then its row `label`; `done(timeout)` waits for what the click
 * opens. The menu's rows are re-rendered when a late codeAction answer for the new selection
 * arrives: a click on a row being replaced resolves the action but runs nothing, and a menu
 * opened in between may lack the row. Either way the menu is opened again, up to three times
 * (the server answers in seconds). The menu's rows, as shown when the click was made.
 */
async function refactor(page, editor, quickInput, label, done) {
  for (let attempt = 1; ; attempt++) {
    const last = attempt >= 3;
    await editor.locator(".view-lines").click();
    await page.keyboard.press("Control+A");
    await fromPalette(page, quickInput, "Refactor...");
    log("choose", label, "attempt", attempt);
    try {
      const row = page.locator(".action-widget .monaco-list-row", { hasText: label }).first();
      await row.waitFor({ state: "visible", timeout: last ? 300000 : 30000 });
      const rows = await page.locator(".action-widget .monaco-list-row").allInnerTexts();
      await row.click();
      await done(last ? 300000 : 60000);
      return rows;
    } catch (err) {
      if (last) throw err;
      await page.keyboard.press("Escape");
    }
  }
}

let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.on("pageerror", (e) => log("page error:", e.message));
  page.setDefaultTimeout(timeout);

  log("open", cfg.url);
  await page.goto(cfg.url, { waitUntil: "domcontentloaded" });
  await page.locator(".monaco-workbench").waitFor({ state: "visible" });
  // The explorer shows the workspace once the remote file system is up.
  await page.locator(".explorer-folders-view .monaco-list-row").first().waitFor({ state: "visible" });

  // Open the file from the Explorer, as a user would (Quick Open needs the file search
  // index, which is slow on a busy machine).
  log("open from the explorer", cfg.file);
  await page.locator(".explorer-folders-view .monaco-list-row", { hasText: cfg.file }).first().click();
  const quickInput = page.locator(".quick-input-widget input");
  const editor = page.locator(".part.editor .editor-instance .monaco-editor >> visible=true").first();
  await editor.locator(".view-line").first().waitFor({ state: "visible" });
  await page.locator(`.tab.active[data-resource-name="${cfg.file}"], .tab.active:has-text("${cfg.file}")`).first().waitFor();

  // Wait for the extension: its status bar item turns "ready" once the model is loaded.
  log("waiting for the server to be ready");
  await page.locator('[id="codellama-lsp.codellama-lsp.codellamaLsp.status"], .statusbar-item:has-text("Code Llama")').first().waitFor();
  if (cfg.mode === "startFailure") {
    // The server command cannot be run: an error notification and a red status item say so.
    const toast = page.locator(".notification-toast-container", { hasText: "Code Llama:" }).first();
    await toast.waitFor({ state: "visible" });
    result.notificationText = await toast.innerText();
    log("notification", JSON.stringify(result.notificationText));
    const item = page.locator(".statusbar-item:has(.codicon-error)", { hasText: "Code Llama" }).first();
    await item.waitFor({ state: "visible" });
    result.statusLabel = (await item.getAttribute("aria-label")) ?? (await item.innerText());
    log("status item", JSON.stringify(result.statusLabel));
    const shot = path.join(cfg.artifacts, "vscode-start-failure.png");
    await page.screenshot({ path: shot });
    result.screenshots.push(shot);
    // Its "Open Settings" button opens the setting to change.
    await toast.locator(".monaco-button", { hasText: "Open Settings" }).first().click();
    await page.locator(".settings-editor").first().waitFor({ state: "visible" });
    await page.locator(".setting-item-contents", { hasText: "Server: Command" }).first().waitFor({ state: "visible" });
    result.settingsOpened = true;
  } else if (cfg.mode === "instruct") {
    await waitForReady(page);
    await instructEdit(page, editor, quickInput);
  } else {
    await waitForReady(page);

    // Type at the end of the file.
    await editor.locator(".view-lines").click();
    await page.keyboard.press("Control+End");
    const ghost = page.locator(".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text").first();
    let shown = false;
    result.chunksTyped = 0;
    for (const chunk of cfg.typeChunks) {
      result.chunksTyped += 1;
      // Before `waitFrom` chunks are typed, keep typing: VS Code's Tab indents rather than
      // accepts while the cursor is still in a line's leading whitespace.
      const wait = result.chunksTyped >= (cfg.waitFrom ?? 1);
      log("type", JSON.stringify(chunk));
      if (chunk === "\n") {
        await page.keyboard.press("Enter");
      } else {
        await page.keyboard.type(chunk, { delay: 40 });
      }
      if (!wait) {
        continue;
      }
      try {
        await ghost.waitFor({ state: "visible", timeout: timeout / cfg.typeChunks.length });
        shown = true;
        break;
      } catch {
        log("no ghost text yet");
      }
    }
    if (!shown) {
      throw new Error("no inline suggestion (ghost text) appeared");
    }
    await page.waitForTimeout(300); // let the view zone for further lines render
    result.ghostText = await page.evaluate(() => {
      const ed = [...document.querySelectorAll(".part.editor .monaco-editor")].find((e) =>
        e.querySelector(".ghost-text-decoration, .ghost-text"));
      const inline = [...ed.querySelectorAll(".ghost-text-decoration")].map((e) => e.textContent).join("");
      // Further lines live in a view zone; each line is a .view-line inside it.
      const zones = [...ed.querySelectorAll(".ghost-text")].filter((e) => !e.classList.contains("ghost-text-decoration"));
      const lines = zones.flatMap((z) => {
        const ls = [...z.querySelectorAll(".view-line")];
        return ls.length ? ls.map((l) => l.textContent) : [z.textContent];
      });
      return { inline, lines };
    });
    log("ghost text", JSON.stringify(result.ghostText));
    const shot1 = path.join(cfg.artifacts, "vscode-ghost.png");
    await page.screenshot({ path: shot1 });
    result.screenshots.push(shot1);

    // Accept with Tab, then save.
    await page.keyboard.press("Tab");
    await ghost.waitFor({ state: "hidden", timeout: 10000 }).catch(() => log("ghost text still shown after Tab"));
    await page.keyboard.press("Escape");
    await page.keyboard.press("Control+S");
    await page.locator(".tab.active.dirty").waitFor({ state: "detached", timeout: 15000 });
    log("saved");

    // Hover the function name: the hover shows the generated docstring.
    const word = editor.locator(".view-line span", { hasText: new RegExp(`^${cfg.hoverWord}$`) }).first();
    await page.keyboard.press("Control+Home");
    if (cfg.hoverLine) {
      // Go to Line (Ctrl+G) brings a function further down the file into view.
      await page.keyboard.press("Control+G");
      await quickInput.waitFor({ state: "visible" });
      await quickInput.fill(`:${cfg.hoverLine}`);
      await page.keyboard.press("Enter");
    }
    await word.waitFor({ state: "visible" });
    const hover = page.locator(".monaco-hover:not(.hidden) .hover-contents, .monaco-hover:not(.hidden) .monaco-hover-content").first();
    for (let attempt = 0; attempt < 3; attempt++) {
      await page.mouse.move(5, 5);
      await word.hover();
      try {
        await page.waitForFunction(
          () => [...document.querySelectorAll(".monaco-hover")].some((h) => /generated docstring/.test(h.textContent)),
          null,
          { timeout: timeout / 3 },
        );
        break;
      } catch {
        log("no docstring hover yet");
      }
    }
    result.hoverText = await page.evaluate(() =>
      [...document.querySelectorAll(".monaco-hover")].map((h) => h.innerText).filter((t) => /generated docstring/.test(t)).join("\n"),
    );
    void hover;
    log("hover", JSON.stringify(result.hoverText));
    const shot2 = path.join(cfg.artifacts, "vscode.png");
    await page.screenshot({ path: shot2 });
    result.screenshots.push(shot2);

    // Toggle Suggestions from the Command Palette: the setting flips, live.
    await page.keyboard.press("Escape");
    await fromPalette(page, quickInput, "Code Llama: Toggle Suggestions");
    await page.waitForFunction(
      () => [...document.querySelectorAll(".statusbar-item")].some((e) => /Code Llama.*\(off\)/.test(e.textContent)),
      null,
      { timeout: 20000 },
    );
    result.toggledOff = true;
    log("suggestions toggled off");

    // Clicking the status bar item shows the server's status.
    await page.keyboard.press("Escape");
    // (the item with an icon: the left-hand "suggestions disabled" message has the same words)
    await page.locator(".statusbar-item:has(.codicon)", { hasText: "Code Llama" }).locator(".statusbar-item-label").first().click();
    const toast = page.locator(".notification-toast-container", { hasText: "Code Llama:" }).first();
    await toast.waitFor({ state: "visible", timeout: 20000 });
    result.statusText = await toast.innerText();
    log("status", JSON.stringify(result.statusText));
  }
} catch (err) {
  result.error = String(err && err.stack || err);
  if (page) {
    const shot = path.join(cfg.artifacts, "vscode-failure.png");
    await page.screenshot({ path: shot }).catch(() => {});
    result.screenshots.push(shot);
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.error ? 1 : 0);

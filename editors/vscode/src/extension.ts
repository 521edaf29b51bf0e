// VS Code client for codellama-lsp.
//
// The language server does the work; this extension starts it, forwards the
// `codellamaLsp.*` settings to it, and lets vscode-languageclient map the LSP 3.18
// `textDocument/inlineCompletion` capability onto VS Code's own inline-suggestion UI
// (ghost text, Tab to accept). Hover docstrings and the "Generate docstring" code
// action come through the client the same way; the Instruct actions need a little help
// from the client (instruct.ts).

import * as vscode from "vscode";
import {
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from "vscode-languageclient/node";
import { StatusItem, describeStatus } from "./status";
import {
  SECTION,
  SERVER_SECTION,
  rawServerSection,
  reloadSettingsChanged,
  restartSettingsChanged,
  serverSettings,
  serverSettingsChanged,
} from "./settings";
import { INSTRUCT_COMMAND, runInstruct } from "./instruct";
import { INSTALL_HINT, expandHome, findExecutable, missingCommand } from "./command";
import { watchRestingCursor } from "./rest";

let client: LanguageClient | undefined;
let log: vscode.LogOutputChannel;
let trace: vscode.LogOutputChannel;
let status: StatusItem;
/** The server said its model is loaded (latency is shown only then). */
let ready = false;
/** We are stopping the server on purpose (restart, deactivate): not an error. */
let stopping = false;
/** Why the server could not be started, for Show Status; undefined once it runs. */
let startProblem: string | undefined;
/** The resting-cursor watch of the running client (rest.ts). */
let resting: vscode.Disposable | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  log = vscode.window.createOutputChannel("Code Llama LSP", { log: true });
  // LSP message trace, kept apart from the log: set this channel's log level to Trace
  // ("Developer: Set Log Level...") and codellamaLsp.trace.server to messages/verbose.
  trace = vscode.window.createOutputChannel("Code Llama LSP Trace", { log: true });
  status = new StatusItem("codellamaLsp.showStatus");
  context.subscriptions.push(log, trace, status);

  context.subscriptions.push(
    vscode.commands.registerCommand("codellamaLsp.restartServer", () => restart()),
    vscode.commands.registerCommand("codellamaLsp.showLog", () => log.show(true)),
    vscode.commands.registerCommand("codellamaLsp.toggleSuggestions", () => toggleSuggestions()),
    vscode.commands.registerCommand("codellamaLsp.showStatus", () => showStatus()),
    vscode.workspace.onDidChangeConfiguration((e) => onConfigurationChanged(e)),
  );

  await start();
}

export async function deactivate(): Promise<void> {
  await stop();
}

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function enabled(): boolean {
  return config().get<boolean>("enabled", true);
}

/**
 * Say that the server cannot be started: the status item turns red, and a notification
 * names the command tried and the setting to change, with a button to open it.
 */
function reportStartProblem(problem: string): void {
  startProblem = problem;
  status.error(problem);
  log.error(problem);
  const message =
    `Code Llama: ${problem}. Install it (${INSTALL_HINT}), start VS Code from its activated ` +
    `virtualenv, or set "codellamaLsp.server.command" to its full path.`;
  void vscode.window.showErrorMessage(message, "Open Settings", "Show Log").then((choice) => {
    if (choice === "Open Settings") {
      void vscode.commands.executeCommand("workbench.action.openSettings", `${SECTION}.server.command`);
    } else if (choice === "Show Log") {
      log.show(true);
    }
  });
}

async function start(): Promise<void> {
  const cfg = config();
  const configured = cfg.get<string>("server.command", "codellama-lsp");
  const args = cfg.get<string[]>("server.args", ["--stdio"]);
  const env = { ...process.env, ...cfg.get<Record<string, string>>("server.env", {}) };
  const languages = cfg.get<string[]>("languages", ["python"]);

  // A missing command would fail as a bare "spawn ENOENT" in the log: check it first.
  const command = expandHome(configured);
  startProblem = undefined;
  if (!findExecutable(command, env)) {
    reportStartProblem(missingCommand(configured));
    log.info(`PATH searched: ${env.PATH ?? ""}`);
    return;
  }

  // `--stdio` is in `args`; TransportKind.stdio would add a second one.
  const serverOptions: ServerOptions = {
    run: { command, args, options: { env } },
    debug: { command, args, options: { env } },
  };

  const clientOptions: LanguageClientOptions = {
    documentSelector: languages.flatMap((language) => [
      { scheme: "file", language },
      { scheme: "untitled", language },
    ]),
    outputChannel: log,
    traceOutputChannel: trace,
    initializationOptions: serverSettings(cfg, rawServerSection()),
    middleware: {
      // The server pulls its settings as the `codellama` section: `codellamaLsp.*`, with VS Code's
      // own answer for that section (a `codellama` object in settings.json) passed through over it.
      workspace: {
        configuration: async (params, token, next) => {
          const rest = await next(params, token);
          if (!Array.isArray(rest)) {
            return rest;
          }
          return params.items.map((item, i) =>
            item.section === SERVER_SECTION ? serverSettings(config(), rest[i]) : rest[i],
          );
        },
      },
      // Instruct actions: ask for Edit's instruction first, show Explain's markdown after (instruct.ts).
      executeCommand: async (command, args, next) =>
        command === INSTRUCT_COMMAND ? runInstruct(args, async (c, a) => next(c, a), log) : next(command, args),
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        if (!enabled()) {
          return null;
        }
        const started = Date.now();
        try {
          const result = await next(document, position, context, token);
          const items = Array.isArray(result) ? result : result?.items ?? [];
          if (ready && !token.isCancellationRequested) {
            status.suggestion(Date.now() - started, items.length);
          }
          return result;
        } catch (err) {
          if (!token.isCancellationRequested) {
            status.error(String(err));
          }
          throw err;
        }
      },
    },
  };

  client = new LanguageClient("codellamaLsp", "Code Llama LSP", serverOptions, clientOptions);
  client.onDidChangeState((e) => {
    if (e.newState === State.Starting) {
      status.loading("starting server");
    } else if (e.newState === State.Stopped) {
      ready = false;
      if (!stopping) {
        status.error("server stopped (see the log; Restart Server to try again)");
      }
    }
  });
  status.loading("starting server");
  ready = false;
  try {
    await client.start();
  } catch (err) {
    log.error(`Failed to start ${command} ${args.join(" ")}: ${err}`);
    reportStartProblem(`the server \`${[configured, ...args].join(" ")}\` did not start (${err})`);
    return;
  }
  status.setEnabled(enabled());
  resting = watchRestingCursor(
    () => client,
    (d) => languages.includes(d.languageId) && (d.uri.scheme === "file" || d.uri.scheme === "untitled"),
    enabled,
  );
  void pollUntilReady(client);
}

async function stop(): Promise<void> {
  const c = client;
  client = undefined;
  ready = false;
  resting?.dispose();
  resting = undefined;
  if (c) {
    stopping = true;
    try {
      await c.stop(5000);
    } catch (err) {
      log.warn(`Stopping the server: ${err}`);
    } finally {
      stopping = false;
    }
  }
}

async function restart(): Promise<void> {
  log.info("Restarting the server");
  await stop();
  await start();
}

/** Ask the server for its status until the model is loaded (it loads in the background). */
async function pollUntilReady(c: LanguageClient): Promise<void> {
  for (let i = 0; client === c && c.state === State.Running; i++) {
    try {
      const s = await fetchStatus(c);
      const d = describeStatus(s);
      if (d.state === "ready") {
        ready = true;
        status.ready(d.detail);
        return;
      }
      if (d.state === "error") {
        status.error(d.detail);
        return;
      }
      status.loading(d.detail);
    } catch (err) {
      log.debug(`codellama.status: ${err}`);
    }
    await new Promise((r) => setTimeout(r, Math.min(250 * (i + 1), 2000)));
  }
}

async function fetchStatus(c: LanguageClient): Promise<unknown> {
  return c.sendRequest("workspace/executeCommand", { command: "codellama.status", arguments: [] });
}

async function showStatus(): Promise<void> {
  log.info("Show Status");
  let summary: string;
  if (!client || client.state !== State.Running) {
    summary = startProblem ?? "the server is not running";
  } else {
    try {
      const raw = await fetchStatus(client);
      log.info(`codellama.status: ${JSON.stringify(raw, null, 2)}`);
      summary = summarizeStatus(raw);
    } catch (err) {
      summary = `codellama.status failed: ${err}`;
    }
  }
  const choice = await vscode.window.showInformationMessage(
    `Code Llama: ${summary}${enabled() ? "" : " (suggestions off)"}`,
    "Show Log",
    "Restart Server",
    enabled() ? "Disable Suggestions" : "Enable Suggestions",
  );
  if (choice === "Show Log") {
    log.show(true);
  } else if (choice === "Restart Server") {
    await restart();
  } else if (choice?.endsWith("Suggestions")) {
    await toggleSuggestions();
  }
}

/** One line from the server's status: state, model, device/dtype/engine, latency percentiles. */
function summarizeStatus(raw: unknown): string {
  const s = (raw && typeof raw === "object" ? raw : {}) as Record<string, unknown>;
  const parts = [String(s.state ?? "unknown")];
  if (typeof s.error === "string" && s.error) {
    parts.push(s.error);
  }
  if (s.model) {
    const engine = typeof s.engine === "string" ? `, ${s.engine}` : "";
    parts.push(`model ${s.model}${s.device ? ` (${s.device}, ${s.dtype}${engine})` : ""}`);
  }
  if (typeof s.latency_p50_ms === "number") {
    const p95 = typeof s.latency_p95_ms === "number" ? `, p95 ${Math.round(s.latency_p95_ms)} ms` : "";
    parts.push(`latency p50 ${Math.round(s.latency_p50_ms)} ms${p95}`);
  }
  return parts.join(" · ");
}

async function toggleSuggestions(): Promise<void> {
  const next = !enabled();
  await config().update("enabled", next, vscode.ConfigurationTarget.Global);
  vscode.window.setStatusBarMessage(`Code Llama suggestions ${next ? "enabled" : "disabled"}`, 3000);
}

async function onConfigurationChanged(e: vscode.ConfigurationChangeEvent): Promise<void> {
  if (!e.affectsConfiguration(SECTION) && !e.affectsConfiguration(SERVER_SECTION)) {
    return;
  }
  status.setEnabled(enabled());
  if (restartSettingsChanged(e)) {
    await restart();
    return;
  }
  // Live settings: push them to the running server.
  if (serverSettingsChanged(e) && client?.state === State.Running) {
    const settings = serverSettings(config(), rawServerSection());
    log.info(`Settings changed: ${JSON.stringify(settings)}`);
    await client.sendNotification("workspace/didChangeConfiguration", {
      settings: { [SERVER_SECTION]: settings },
    });
    if (reloadSettingsChanged(e)) {
      ready = false; // the server reloads the model
      status.loading("reloading model");
      void pollUntilReady(client);
    }
  }
}

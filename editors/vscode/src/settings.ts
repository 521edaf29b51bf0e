import * as vscode from "vscode";

export const SECTION = "codellamaLsp";
/** The section name the server reads its settings under. */
export const SERVER_SECTION = "codellama";

/** Settings the server reads (initializationOptions / workspace/didChangeConfiguration). */
export const SERVER_KEYS = [
  "enabled",
  "model",
  "device",
  "dtype",
  "engine",
  "reuseSuffix",
  "prefetch",
  "tokenHealing",
  "compile",
  "quantize",
  "family",
  "format",
  "maxNewTokens",
  "prefixTokens",
  "suffixTokens",
  "contextTokens",
  "temperature",
  "timeBudgetMs",
  "chat",
  "instructMaxTokens",
  "instructTimeBudgetMs",
  "docstrings",
  "promptCacheMb",
] as const;

/** Settings that only take effect when the server process is started again. */
const RESTART_KEYS = ["server.command", "server.args", "server.env", "languages"];

export function serverSettings(cfg: vscode.WorkspaceConfiguration): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of SERVER_KEYS) {
    const value = cfg.get(key);
    if (value !== undefined && value !== null && value !== "") {
      out[key] = value;
    }
  }
  return out;
}

export function serverSettingsChanged(e: vscode.ConfigurationChangeEvent): boolean {
  return SERVER_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`));
}

export function restartSettingsChanged(e: vscode.ConfigurationChangeEvent): boolean {
  return RESTART_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`));
}

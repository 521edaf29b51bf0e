import * as vscode from "vscode";

export const SECTION = "codellamaLsp";
/** The section name the server reads its settings under. */
export const SERVER_SECTION = "codellama";

// BEGIN generated settings: scripts/generate_settings.py writes this part from codellama_lsp/settings.py
/** Settings the server reads (initializationOptions, workspace/configuration, didChangeConfiguration). */
export const SERVER_KEYS = [
  "model",
  "device",
  "dtype",
  "format",
  "maxNewTokens",
  "prefixTokens",
  "suffixTokens",
  "contextTokens",
  "temperature",
  "timeBudgetMs",
  "enabled",
  "backend",
  "url",
  "apiKeyEnv",
  "tokenizer",
  "family",
  "engine",
  "compile",
  "quantize",
  "reuseSuffix",
  "prefetch",
  "chat",
  "instructMaxTokens",
  "instructTimeBudgetMs",
  "promptCacheMb",
  "tokenHealing",
  "minConfidence",
  "contextLength",
  "docstrings",
] as const;
/** Server settings whose change reloads the model. */
export const RELOAD_KEYS: readonly string[] = ["model", "device", "dtype", "backend", "url", "apiKeyEnv", "tokenizer", "family", "engine", "compile", "quantize", "reuseSuffix", "contextLength"];
// END generated settings

/** Settings that only take effect when the server process is started again. */
const RESTART_KEYS = ["server.command", "server.args", "server.env", "languages"];

/**
 * The server's settings: the `codellamaLsp.<key>` entries that have a value, and over them the
 * entries of a `codellama` section written in settings.json (the form team deployment documents),
 * passed through as they are; the server checks both alike.
 */
export function serverSettings(cfg: vscode.WorkspaceConfiguration, section: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of SERVER_KEYS) {
    const value = cfg.get(key);
    if (value !== undefined && value !== null && value !== "") {
      out[key] = value;
    }
  }
  if (section !== null && typeof section === "object" && !Array.isArray(section)) {
    Object.assign(out, section);
  }
  return out;
}

/** The `codellama` section of settings.json, when there is one. */
export function rawServerSection(): unknown {
  return vscode.workspace.getConfiguration().get(SERVER_SECTION);
}

export function serverSettingsChanged(e: vscode.ConfigurationChangeEvent): boolean {
  return e.affectsConfiguration(SERVER_SECTION) || SERVER_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`));
}

export function reloadSettingsChanged(e: vscode.ConfigurationChangeEvent): boolean {
  return RELOAD_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`) || e.affectsConfiguration(`${SERVER_SECTION}.${k}`));
}

export function restartSettingsChanged(e: vscode.ConfigurationChangeEvent): boolean {
  return RESTART_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`));
}

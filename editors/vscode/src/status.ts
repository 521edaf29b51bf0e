import * as vscode from "vscode";

export type ServerState = "loading" | "ready" | "error";

/**
 * Reads the reply of the server's `codellama.status` command. It is tolerant about the
 * shape: a `state`/`status` string, or `loaded`/`ready` booleans, plus an optional `error`.
 */
export function describeStatus(raw: unknown): { state: ServerState; detail: string } {
  const s = (raw && typeof raw === "object" ? raw : {}) as Record<string, unknown>;
  const model = typeof s.model === "string" ? s.model : typeof s.model_path === "string" ? s.model_path : "";
  const err = s.error ?? s.load_error ?? s.loadError;
  if (typeof err === "string" && err) {
    return { state: "error", detail: err };
  }
  const word = String(s.state ?? s.status ?? "").toLowerCase();
  if (word === "error" || word === "failed") {
    return { state: "error", detail: String(s.message ?? "model failed to load") };
  }
  if (word === "ready" || word === "loaded" || s.loaded === true || s.ready === true) {
    return { state: "ready", detail: model };
  }
  return { state: "loading", detail: model ? `loading ${model}` : "loading model" };
}

/** The status bar item: loading / ready / last suggestion latency / error. */
export class StatusItem implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private text = "";
  private enabled = true;
  private kind: ServerState | "suggestion" = "loading";

  constructor(command: string) {
    this.item = vscode.window.createStatusBarItem("codellamaLsp.status", vscode.StatusBarAlignment.Right, 100);
    this.item.name = "Code Llama";
    this.item.command = command;
    this.item.show();
  }

  loading(detail: string): void {
    this.kind = "loading";
    this.render("$(loading~spin) Code Llama", `Code Llama: ${detail}`, undefined);
  }

  ready(detail: string): void {
    this.kind = "ready";
    this.render("$(check) Code Llama", `Code Llama: ready${detail ? ` (${detail})` : ""}`, undefined);
  }

  suggestion(ms: number, count: number): void {
    this.kind = "suggestion";
    const what = count ? `${ms} ms` : `no suggestion (${ms} ms)`;
    this.render(`$(sparkle) Code Llama ${ms} ms`, `Code Llama: last suggestion: ${what}`, undefined);
  }

  error(detail: string): void {
    this.kind = "error";
    this.render(
      "$(error) Code Llama",
      `Code Llama error: ${detail}`,
      new vscode.ThemeColor("statusBarItem.errorBackground"),
    );
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.item.text = this.decorate(this.text);
  }

  summary(): string {
    return `${this.kind}${this.enabled ? "" : " (suggestions off)"}: ${this.item.tooltip ?? ""}`;
  }

  private render(text: string, tooltip: string, background: vscode.ThemeColor | undefined): void {
    this.text = text;
    this.item.text = this.decorate(text);
    this.item.tooltip = `${tooltip}\nClick for status and actions.`;
    this.item.accessibilityInformation = { label: tooltip };
    this.item.backgroundColor = background;
  }

  private decorate(text: string): string {
    return this.enabled ? text : `${text} (off)`;
  }

  dispose(): void {
    this.item.dispose();
  }
}

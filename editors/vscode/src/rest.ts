// Where the cursor rests: once it has not moved for REST_MS (a file opened, a click, a jump), the
// server is told (`codellama/cursorRest`) and computes the suggestion there while the user reads,
// as llama.vim warms its cache on CursorHold. A keystroke or a move before then restarts the wait.

import * as vscode from "vscode";
import { LanguageClient, State } from "vscode-languageclient/node";

export const REST_MS = 300;
export const CURSOR_REST = "codellama/cursorRest";

export function watchRestingCursor(
  client: () => LanguageClient | undefined,
  served: (document: vscode.TextDocument) => boolean,
  enabled: () => boolean,
): vscode.Disposable {
  let timer: NodeJS.Timeout | undefined;
  const later = (editor: vscode.TextEditor | undefined): void => {
    if (timer) {
      clearTimeout(timer);
      timer = undefined;
    }
    if (!editor || !enabled() || !served(editor.document)) {
      return;
    }
    timer = setTimeout(() => {
      timer = undefined;
      const c = client();
      if (c === undefined || c.state !== State.Running || vscode.window.activeTextEditor !== editor) {
        return;
      }
      const convert = c.code2ProtocolConverter;
      void c.sendNotification(CURSOR_REST, {
        textDocument: convert.asTextDocumentIdentifier(editor.document),
        position: convert.asPosition(editor.selection.active),
      });
    }, REST_MS);
  };
  later(vscode.window.activeTextEditor);
  return vscode.Disposable.from(
    vscode.window.onDidChangeActiveTextEditor(later),
    vscode.window.onDidChangeTextEditorSelection((e) => later(e.textEditor)),
    { dispose: () => timer && clearTimeout(timer) },
  );
}

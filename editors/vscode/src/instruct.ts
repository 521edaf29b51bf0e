// The client half of the server's Instruct actions (Explain, Write tests, Fix, Edit selection…).
//
// A chosen action runs the server's `codellama.instruct` command. Before it goes out,
// "Edit selection…" asks for the instruction (an input box) and adds it to the command's
// argument; when the answer comes back, Explain's markdown is shown beside the code in
// VS Code's markdown preview, and an error is shown as a warning. The edits of the other
// actions arrive as workspace/applyEdit, which vscode-languageclient applies itself.

import * as vscode from "vscode";

export const INSTRUCT_COMMAND = "codellama.instruct";

type Next = (command: string, args: unknown[]) => Promise<unknown>;

interface InstructArgument {
  action?: string;
  instruction?: string;
}

interface InstructAnswer {
  error?: string;
  markdown?: string;
  applied?: boolean;
}

/** vscode-languageclient's executeCommand middleware for `codellama.instruct`. */
export async function runInstruct(args: unknown[], next: Next, log: vscode.LogOutputChannel): Promise<unknown> {
  const argument = { ...((args[0] ?? {}) as InstructArgument) };
  if (argument.action === "edit" && !argument.instruction) {
    const instruction = await vscode.window.showInputBox({
      title: "Code Llama: Edit selection",
      prompt: "How should the selected code change?",
      placeHolder: "e.g. add type hints",
      ignoreFocusOut: true,
    });
    if (!instruction) {
      return undefined; // dismissed
    }
    argument.instruction = instruction;
  }
  const answer = ((await next(INSTRUCT_COMMAND, [argument, ...args.slice(1)])) ?? {}) as InstructAnswer;
  if (answer.error) {
    log.warn(`codellama.instruct: ${answer.error}`);
    void vscode.window.showWarningMessage(`Code Llama: ${answer.error}`);
  } else if (typeof answer.markdown === "string") {
    await showMarkdown(answer.markdown);
  } else if (answer.applied === false) {
    void vscode.window.showWarningMessage("Code Llama: the edit was not applied (the document changed?)");
  }
  return answer;
}

/**
 * The explanation as an untitled markdown document beside the code, shown as its preview: the
 * preview opens in the active group, so the document is made active there first and the code
 * stays in view.
 */
async function showMarkdown(markdown: string): Promise<void> {
  const doc = await vscode.workspace.openTextDocument({ language: "markdown", content: markdown });
  await vscode.window.showTextDocument(doc, { viewColumn: vscode.ViewColumn.Beside, preview: true });
  try {
    await vscode.commands.executeCommand("markdown.showPreview", doc.uri);
  } catch {
    // no markdown extension: the source stays shown, which reads well enough
  }
}

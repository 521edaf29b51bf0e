import * as fs from "fs";
import * as os from "os";
import * as path from "path";

/** How a new user gets the server: the README's command, in a clone of the repository. */
export const INSTALL_HINT = "pip install torch==2.13.0 && pip install -e '.[qwen]' in a clone of codellama-lsp";

/** `~/x` as the home directory's `x`: a settings value is not expanded by a shell. */
export function expandHome(command: string): string {
  return command === "~" || command.startsWith("~/") ? path.join(os.homedir(), command.slice(1)) : command;
}

function isExecutableFile(file: string): boolean {
  try {
    fs.accessSync(file, process.platform === "win32" ? fs.constants.F_OK : fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * Where `command` is, looked up the way the server process will be spawned (PATH of `env`,
 * and PATHEXT on Windows), or undefined. Spawning a missing command fails with a bare
 * ENOENT deep in the client's log; checking first lets the extension say which command it
 * tried and which setting to change.
 */
export function findExecutable(command: string, env: NodeJS.ProcessEnv): string | undefined {
  const win = process.platform === "win32";
  const exts = win ? ["", ...(env.PATHEXT ?? ".COM;.EXE;.BAT;.CMD").split(";").filter(Boolean)] : [""];
  const first = (base: string) => exts.map((e) => base + e).find(isExecutableFile);
  if (command.includes("/") || (win && command.includes("\\"))) {
    return first(path.resolve(command));
  }
  for (const dir of (env.PATH ?? env.Path ?? "").split(path.delimiter)) {
    const found = dir ? first(path.join(dir, command)) : undefined;
    if (found) {
      return found;
    }
  }
  return undefined;
}

/** One line saying why `command` cannot be started. */
export function missingCommand(command: string): string {
  const where = command.includes("/") || command.includes("\\") ? "is not an executable file" : "is not on PATH";
  return `cannot start the server: \`${command}\` ${where}`;
}

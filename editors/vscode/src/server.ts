// Finds the ghostline binary to start, the way rust-analyzer's extension finds its server: the
// `ghostline.path` setting when it is set (and then nothing else), else the server bundled in a
// platform-specific .vsix at `<extension>/server/bin/ghostline`, else `ghostline` on PATH, else
// `cargo install`'s `~/.cargo/bin/ghostline` (a VS Code started from a desktop menu often has a
// PATH without it). A candidate counts only if `ghostline --version` runs, so a binary for another platform or one
// missing its shared libraries is reported here rather than as a dead language client.
//
// This file never starts the language server and never shows anything: it returns the binary,
// or an error message that names every place it looked and how to install the server.

import { execFile } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

/** Where a server binary came from. */
export type ServerSource = 'setting' | 'bundled' | 'path' | 'cargo';

/** A binary that answered `--version`. */
export interface ResolvedServer {
  command: string;
  source: ServerSource;
  /** The first line of `ghostline --version`, e.g. `ghostline 0.1.0`. */
  version: string;
}

/** One place looked in, and why it was not used (for the error message). */
interface Attempt {
  place: string;
  problem: string;
}

export class ServerNotFoundError extends Error {}

/** How long `ghostline --version` may take before the candidate counts as broken. */
const VERSION_TIMEOUT_MS = 10000;

const EXE_NAME = process.platform === 'win32' ? 'ghostline.exe' : 'ghostline';

/** The bundled server's path inside an installed extension. */
export function bundledServerPath(extensionPath: string): string {
  return path.join(extensionPath, 'server', 'bin', EXE_NAME);
}

/** Finds the server: `ghostline.path` (the value of the setting, possibly empty), the bundled
 * copy under `extensionPath`, PATH, then `$CARGO_HOME/bin`. Throws ServerNotFoundError when none of them runs. */
export async function resolveServer(settingPath: string, extensionPath: string): Promise<ResolvedServer> {
  const attempts: Attempt[] = [];
  const setting = settingPath.trim();
  if (setting !== '') {
    const command = expandHome(setting);
    const res = await tryCandidate(command, 'setting', `ghostline.path = ${command}`, attempts);
    if (res) {
      return res;
    }
    // An explicit setting is never silently replaced by another binary.
    throw new ServerNotFoundError(notFoundMessage(attempts, true));
  }
  attempts.push({ place: 'ghostline.path', problem: 'not set' });

  const bundled = bundledServerPath(extensionPath);
  if (fs.existsSync(bundled)) {
    makeExecutable(bundled);
    const res = await tryCandidate(bundled, 'bundled', `the bundled server ${bundled}`, attempts);
    if (res) {
      return res;
    }
  } else {
    attempts.push({ place: `the bundled server ${bundled}`, problem: 'missing: this .vsix is not a platform-specific one' });
  }

  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter((dir) => dir !== '');
  const onPath = dirs.map((dir) => path.join(dir, EXE_NAME)).find(isExecutableFile);
  if (onPath) {
    const res = await tryCandidate(onPath, 'path', `PATH: ${onPath}`, attempts);
    if (res) {
      return res;
    }
  } else {
    attempts.push({ place: `\`${EXE_NAME}\` on PATH`, problem: `not in any of its ${dirs.length} directories` });
  }

  const cargoHome = process.env.CARGO_HOME || path.join(os.homedir(), '.cargo');
  const installed = path.join(cargoHome, 'bin', EXE_NAME);
  if (installed !== onPath) {
    const res = await tryCandidate(installed, 'cargo', `cargo install's ${installed}`, attempts);
    if (res) {
      return res;
    }
  }
  throw new ServerNotFoundError(notFoundMessage(attempts, false));
}

/** Runs `command --version`; records why it failed in `attempts`. */
async function tryCandidate(command: string, source: ServerSource, place: string, attempts: Attempt[]): Promise<ResolvedServer | undefined> {
  if (!fs.existsSync(command)) {
    attempts.push({ place, problem: 'no such file' });
    return undefined;
  }
  try {
    const version = await runVersion(command);
    return { command, source, version };
  } catch (err) {
    attempts.push({ place, problem: `\`--version\` failed: ${errorText(err)}` });
    return undefined;
  }
}

function runVersion(command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, ['--version'], { timeout: VERSION_TIMEOUT_MS, windowsHide: true }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${err.message.split('\n')[0]}${stderr.trim() ? ` (${stderr.trim().split('\n')[0]})` : ''}`));
      } else {
        resolve(stdout.trim().split('\n')[0] ?? '');
      }
    });
  });
}

/** A .vsix packed on Windows, or an unzip that drops modes, leaves the bundled binary without
 * its executable bit; this extension owns that file, so it may set the bit back. */
function makeExecutable(file: string): void {
  if (process.platform === 'win32') {
    return;
  }
  try {
    fs.accessSync(file, fs.constants.X_OK);
  } catch {
    try {
      fs.chmodSync(file, fs.statSync(file).mode | 0o755);
    } catch {
      // Reported by the `--version` run that follows.
    }
  }
}

function isExecutableFile(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) {
      return false;
    }
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function expandHome(file: string): string {
  return file === '~' || file.startsWith('~/') ? path.join(os.homedir(), file.slice(1)) : file;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function notFoundMessage(attempts: Attempt[], explicit: boolean): string {
  const looked = attempts.map((attempt) => `${attempt.place} (${attempt.problem})`).join('; ');
  const fix = explicit
    ? 'Set ghostline.path to a working ghostline binary, or clear it to use the bundled server or `ghostline` on PATH'
    : 'Install the Ghostline .vsix built for this platform (it bundles the server), or build the server from a source checkout with `cargo install --path .` so that `ghostline` is on PATH, or set ghostline.path to the ghostline binary';
  return `no working ghostline server found. Looked in: ${looked}. ${fix}`;
}

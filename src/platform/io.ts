/**
 * Standard streams and files: terminals, synchronous line writes, following
 * a growing file, reading a secret's file.
 *
 * @module
 */

/**
 * Tells whether stderr is a terminal (for progress lines).
 *
 * @returns `true` on a terminal.
 */
export function stderrIsTerminal(): boolean {
  return Deno.stderr.isTerminal();
}

/**
 * Tells whether stdout is a terminal (for the monitor's screen).
 *
 * @returns `true` on a terminal.
 */
export function stdoutIsTerminal(): boolean {
  return Deno.stdout.isTerminal();
}

/** Standard streams as web streams, for sinks and readers. */
export const stdio = {
  get stdin(): ReadableStream<Uint8Array> {
    return Deno.stdin.readable;
  },
  writeStdoutSync(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.length) {
      off += Deno.stdout.writeSync(bytes.subarray(off));
    }
  },
  writeStderrSync(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.length) {
      off += Deno.stderr.writeSync(bytes.subarray(off));
    }
  },
};

const encoder = new TextEncoder();

/**
 * Writes a line to stdout (CLI output; the service writes only log lines).
 *
 * @param text The line, without its trailing newline.
 */
export function print(text: string): void {
  stdio.writeStdoutSync(encoder.encode(text + "\n"));
}

/**
 * Writes a line to stderr.
 *
 * @param text The line, without its trailing newline.
 */
export function printError(text: string): void {
  stdio.writeStderrSync(encoder.encode(text + "\n"));
}

/**
 * Reads what a file holds past `offset` (to follow a growing log file).
 *
 * @param path File path.
 * @param offset Bytes already read.
 * @returns The new bytes and the file's size now (a smaller size means it was truncated or rotated).
 * @throws {Deno.errors.NotFound} When the file does not exist.
 */
export async function readFrom(
  path: string,
  offset: number,
): Promise<{ bytes: Uint8Array; size: number }> {
  using file = await Deno.open(path, { read: true });
  const size = (await file.stat()).size;
  const start = size < offset ? 0 : offset;
  await file.seek(start, Deno.SeekMode.Start);
  const bytes = new Uint8Array(size - start);
  let read = 0;
  while (read < bytes.length) {
    const n = await file.read(bytes.subarray(read));
    if (n === null) break;
    read += n;
  }
  return { bytes: bytes.subarray(0, read), size: start + read };
}

/**
 * Reads a whole text file at once (settings' `*_FILE` secrets, read once at
 * start).
 *
 * @param path File path.
 * @returns The file's text (UTF-8).
 * @throws {Deno.errors.NotFound} When the file does not exist; other
 *   `Deno.errors` when it cannot be read.
 */
export function readTextFile(path: string): string {
  return Deno.readTextFileSync(path);
}

/**
 * Writes a whole file at once, replacing it (`sockeye admin profile -o`).
 *
 * @param path File path.
 * @param bytes What it holds.
 * @throws {Deno.errors.PermissionDenied} And other `Deno.errors` when it
 *   cannot be written.
 */
export function writeFile(path: string, bytes: Uint8Array): void {
  Deno.writeFileSync(path, bytes);
}

/**
 * Replaces a text file at once: writes a temporary file beside it, then
 * renames it over the old one, so a reader (nginx reloading) sees the old
 * text or the new, never half of one.
 *
 * @param path File path.
 * @param text The new contents (UTF-8).
 * @throws {Deno.errors.NotFound} When the folder does not exist; other
 *   `Deno.errors` when it cannot be written.
 */
export async function replaceTextFile(
  path: string,
  text: string,
): Promise<void> {
  const tmp = `${path}.tmp.${Deno.pid}`;
  try {
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, path);
  } catch (error) {
    await Deno.remove(tmp).catch(() => {});
    throw error;
  }
}

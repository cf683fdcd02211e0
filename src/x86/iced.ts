/**
 * iced-x86 (the Rust iced decoder compiled to WebAssembly), loaded on first
 * use so commands that never decode do not pay for it. Shared by the audit
 * disassembler and the VMM's write-site locator.
 */
import { createRequire } from "node:module";

export type Iced = typeof import("iced-x86");

let iced: Iced | null | undefined;
let loadError = "";

/** The library, or null when it cannot be loaded (see icedLoadError). */
export function loadIced(): Iced | null {
  if (iced === undefined) {
    try {
      iced = createRequire(import.meta.url)("iced-x86") as Iced;
    } catch (e) {
      iced = null;
      loadError = e instanceof Error ? (e.message.split("\n")[0] ?? "") : String(e);
    }
  }
  return iced;
}

/** Why the decoder is unavailable, or "" when it loaded (or was not tried yet). */
export function icedLoadError(): string {
  return loadError;
}

/**
 * Generates the C header for guest code from src/abi/guest-abi.ts.
 * Usage: node dist/scripts/gen-abi-header.js OUT.h   (or no argument: stdout)
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { pathToFileURL } from "node:url";
import {
  ABI_CONSTANTS,
  CONTEXT_FLAGS,
  EVENT_KINDS,
  REG_NAMES,
  SHARED_STRUCTS,
  VERDICTS,
} from "../src/abi/guest-abi.js";
import type { StructLayout } from "../src/abi/layout.js";

const C_TYPE = { u8: "uint8_t", u16: "uint16_t", u32: "uint32_t", u64: "uint64_t" } as const;

function macroName(s: string): string {
  return s.replace(/[^A-Za-z0-9]/g, "_").toUpperCase();
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function structToC(s: StructLayout): string {
  const lines = [`/* ${s.doc} */`, `struct ${s.cName} {`];
  for (const f of s.fields) {
    const arr = f.count > 1 ? `[${f.count}]` : "";
    const doc = f.doc ? ` /* ${f.doc} */` : "";
    const type = typeof f.type === "string" ? C_TYPE[f.type] : `struct ${f.type.cName}`;
    lines.push(`    ${type} ${f.name}${arr};${doc}`);
  }
  lines.push("};");
  lines.push(`_Static_assert(sizeof(struct ${s.cName}) == ${s.size}, "${s.cName} size");`);
  for (const f of s.fields) {
    lines.push(`_Static_assert(offsetof(struct ${s.cName}, ${f.name}) == ${f.offset}, "${s.cName}.${f.name}");`);
  }
  return lines.join("\n");
}

export function generateAbiHeader(): string {
  const out: string[] = [
    "/* Generated from src/abi/guest-abi.ts by scripts/gen-abi-header.ts. Do not edit. */",
    "#ifndef GV_ABI_H",
    "#define GV_ABI_H",
    "",
  ];
  for (const [k, v] of Object.entries(ABI_CONSTANTS)) out.push(`#define GV_${k} ${hex(v)}`);
  out.push("");
  for (const [k, v] of Object.entries(EVENT_KINDS)) out.push(`#define GV_EVENT_${macroName(k)} ${v}`);
  out.push("");
  for (const [k, v] of Object.entries(VERDICTS)) out.push(`#define GV_VERDICT_${macroName(k)} ${v}`);
  out.push("");
  for (const [k, v] of Object.entries(CONTEXT_FLAGS)) out.push(`#define GV_CTXF_${k} ${v}`);
  out.push("");
  REG_NAMES.forEach((r, i) => {
    out.push(`#define GV_REG_${r.toUpperCase()} ${i}`);
  });
  out.push("");
  out.push("#ifndef __ASSEMBLER__", "#include <stdint.h>", "#include <stddef.h>", "");
  for (const s of SHARED_STRUCTS) out.push(structToC(s), "");
  out.push("#endif /* __ASSEMBLER__ */");
  out.push("#endif /* GV_ABI_H */", "");
  return out.join("\n");
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const target = process.argv[2];
  const text = generateAbiHeader();
  if (target) {
    mkdirSync(dirname(target), { recursive: true });
    // Keep the file (and what depends on it) untouched when nothing changed.
    if (!existsSync(target) || readFileSync(target, "utf8") !== text) writeFileSync(target, text);
  } else {
    process.stdout.write(text);
  }
}

/**
 * Fuzzing the policy loader: random and mutated files either load (and then
 * resolve and compile, or fail to with CONFIG_INVALID) or fail with one
 * CONFIG_INVALID error naming the file. Nothing else may come out.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { stringify } from "yaml";
import { compilePolicy } from "../../src/decide/policy.js";
import { GuardvisorError } from "../../src/errors.js";
import { makeRegions } from "../../src/model/regions.js";
import { parsePolicyText } from "../../src/policy/load.js";
import { resolvePolicy } from "../../src/policy/resolve.js";
import { prng } from "./elf-fixtures.js";
import { GOOD_POLICY_FILES, testKernel } from "./policy-fixtures.js";

const kernel = testKernel();
const regions = makeRegions(kernel.regions, 1 << 24);

const SEEDS = GOOD_POLICY_FILES.map((p) => ({
  name: p.endsWith(".json") ? "fuzz.json" : "fuzz.yaml",
  text: readFileSync(p, "utf8"),
}));

const WORDS = [
  "version",
  "name",
  "description",
  "mode",
  "defaults",
  "regions",
  "objects",
  "exceptions",
  "rules",
  "restart",
  "section",
  "symbol",
  "offset",
  "size",
  "from",
  "to",
  "event",
  "region",
  "vector",
  "cpl",
  "msr",
  "originator",
  "rip",
  "action",
  "reason",
  "msrs",
  "idt",
  "gdt",
  "pinned-cr",
  "cr0",
  "cr4",
  "seal",
  "limit",
  "window",
  "exhausted",
  "audit",
  "enforce",
  "allow",
  "deny",
  "deny-fault",
  "log",
  "kill-task",
  "pause",
  "halt",
  "protected-write",
  "msr-write",
  "cpu-exception",
  "crash",
  "hang",
  "integrity",
  ".text",
  ".rodata",
  ".data",
  "kmain",
  "gv_legit_patch",
  "syscall_table",
  "counter",
  "_start",
  "LSTAR",
  "GP",
  "#PF",
  "WP",
  "SMEP",
  "__proto__",
  "constructor",
  "0",
  "1",
  "3",
  "4",
  "31",
  "32",
  "-1",
  "0x100000",
  "0x101040",
  "1e400",
  "null",
  "true",
  "~",
  "[]",
  "{}",
  "&a",
  "*a",
  "!tag",
  "<<",
  "? ",
  "- ",
  ": ",
  "\t",
  "'",
  '"',
  "#",
  "|",
  ">",
  "%",
  "@",
];
const PUNCT = [
  " ",
  "  ",
  "\n",
  "\n  ",
  "\n    - ",
  ":",
  ": ",
  "- ",
  ",",
  "[",
  "]",
  "{",
  "}",
  '"',
  "'",
  "&",
  "*",
  "!",
  "#",
];

type Rand = () => number;
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;

function randomValue(r: Rand, depth: number): unknown {
  const k = r();
  if (depth > 3 || k < 0.35) {
    return pick(r, [
      pick(r, WORDS),
      Math.floor(r() * 40) - 4,
      r() * 10,
      true,
      null,
      0x100000 + Math.floor(r() * 0x3000),
      "",
    ]);
  }
  if (k < 0.6) return Array.from({ length: Math.floor(r() * 4) }, () => randomValue(r, depth + 1));
  const o: Record<string, unknown> = {};
  for (let i = Math.floor(r() * 5); i > 0; i--) o[pick(r, WORDS)] = randomValue(r, depth + 1);
  return o;
}

/** A policy-shaped structure with random holes and wrong values. */
function randomPolicy(r: Rand): unknown {
  const p: Record<string, unknown> = { version: r() < 0.9 ? 1 : randomValue(r, 3) };
  const rule = () => {
    const o: Record<string, unknown> = { name: `r${Math.floor(r() * 6)}`, action: pick(r, WORDS) };
    for (const key of ["event", "region", "vector", "cpl", "msr", "originator", "rip", "reason"]) {
      if (r() < 0.3) o[key] = randomValue(r, 2);
    }
    return o;
  };
  if (r() < 0.7) p.rules = Array.from({ length: Math.floor(r() * 4) }, rule);
  if (r() < 0.4) p.exceptions = Array.from({ length: Math.floor(r() * 3) }, rule);
  if (r() < 0.4) p.regions = { a: randomValue(r, 1), b: { section: pick(r, WORDS) }, c: { symbol: pick(r, WORDS) } };
  if (r() < 0.3) p.objects = { msrs: [{ msr: pick(r, WORDS) }], "pinned-cr": { cr0: pick(r, WORDS) } };
  if (r() < 0.3) p.defaults = { [pick(r, WORDS)]: pick(r, WORDS) };
  if (r() < 0.2) p.restart = randomValue(r, 1);
  if (r() < 0.3) p.mode = pick(r, WORDS);
  if (r() < 0.2) p[pick(r, WORDS)] = randomValue(r, 1);
  return p;
}

function mutate(r: Rand, text: string): string {
  let t = text;
  for (let n = 1 + Math.floor(r() * 4); n > 0; n--) {
    const at = Math.floor(r() * (t.length + 1));
    const lines = t.split("\n");
    const li = Math.floor(r() * lines.length);
    switch (Math.floor(r() * 8)) {
      case 0: // delete a span
        t = t.slice(0, at) + t.slice(at + 1 + Math.floor(r() * 8));
        break;
      case 1: // insert a word
        t = t.slice(0, at) + pick(r, WORDS) + t.slice(at);
        break;
      case 2: // insert punctuation
        t = t.slice(0, at) + pick(r, PUNCT) + t.slice(at);
        break;
      case 3: // replace a word
        t = t.replace(
          new RegExp(`\\b${pick(r, ["deny", "text", "version", "name", "event", "action", "1"])}\\b`),
          pick(r, WORDS),
        );
        break;
      case 4: // drop a line
        lines.splice(li, 1);
        t = lines.join("\n");
        break;
      case 5: // duplicate a line
        lines.splice(li, 0, lines[li] ?? "");
        t = lines.join("\n");
        break;
      case 6: // re-indent a line
        lines[li] = (r() < 0.5 ? " " : "") + (lines[li] ?? "").replace(/^ {1,2}/, r() < 0.5 ? "" : "   ");
        t = lines.join("\n");
        break;
      default: // a random byte
        t = t.slice(0, at) + String.fromCharCode(Math.floor(r() * 256)) + t.slice(at + 1);
    }
  }
  return t;
}

function randomText(r: Rand): string {
  let t = "";
  for (let n = Math.floor(r() * 40); n > 0; n--) t += r() < 0.5 ? pick(r, WORDS) : pick(r, PUNCT);
  return t;
}

interface Tally {
  loaded: number;
  resolved: number;
  rejected: number;
}

/** Loads (and, when it loads, resolves and compiles) one input; anything but CONFIG_INVALID fails the test. */
function tryOne(text: string, name: string, tally: Tally): void {
  try {
    const file = parsePolicyText(text, name);
    tally.loaded++;
    compilePolicy(resolvePolicy(file, kernel), regions);
    tally.resolved++;
  } catch (e) {
    if (!(e instanceof GuardvisorError) || e.code !== "CONFIG_INVALID") {
      assert.fail(`input ${JSON.stringify(text.slice(0, 400))} threw ${e instanceof Error ? e.stack : String(e)}`);
    }
    assert.ok(!e.message.includes("\n"), `multi-line error: ${e.message}`);
    assert.ok(e.message.startsWith(`${name}`), `error does not name the file: ${e.message}`);
    tally.rejected++;
  }
}

describe("policy loader fuzzing", () => {
  it("never throws anything but CONFIG_INVALID, on random and mutated files", (t) => {
    const r = prng(0x9e1c7);
    const tally: Tally = { loaded: 0, resolved: 0, rejected: 0 };
    const started = Date.now();
    for (let i = 0; i < 1000; i++) {
      const seed = pick(r, SEEDS);
      tryOne(mutate(r, seed.text), seed.name, tally);
    }
    for (let i = 0; i < 500; i++) {
      const p = randomPolicy(r);
      tryOne(r() < 0.8 ? stringify(p) : JSON.stringify(p, null, r() < 0.5 ? 2 : 0), "fuzz.yaml", tally);
    }
    for (let i = 0; i < 1000; i++) tryOne(randomText(r), r() < 0.2 ? "fuzz.json" : "fuzz.yaml", tally);
    const ms = Date.now() - started;
    t.diagnostic(`${JSON.stringify(tally)} in ${ms} ms`);
    // The corpus must reach past the parser: some inputs load, some of those resolve.
    assert.ok(tally.loaded > 100, `only ${tally.loaded} inputs loaded`);
    assert.ok(tally.resolved > 50, `only ${tally.resolved} inputs resolved`);
    assert.ok(tally.rejected > 1000, `only ${tally.rejected} inputs rejected`);
    // About 2500 inputs take a few seconds; the bound leaves room for a slow machine.
    assert.ok(ms < 30_000, `fuzzing took ${ms} ms`);
  });
});

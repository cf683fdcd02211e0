/**
 * The policy file schema (docs/policy.md): structure, types and value ranges.
 * Every object is strict (unknown fields are errors). Cross-field checks that
 * need the whole file (names, references) are in load.ts; checks that need the
 * kernel (sections, symbols) are in resolve.ts.
 */
import { z } from "zod";
import { EVENT_KINDS, type EventKind, VERDICTS, type Verdict } from "../abi/guest-abi.js";
import {
  CR0_BITS,
  CR4_BITS,
  crBit,
  INTEGRITY_OBJECTS,
  integrityObject,
  MSR_NAMES,
  msrIndex,
  VECTOR_NAMES,
  vectorNumber,
} from "./names.js";

export const POLICY_FORMAT_VERSION = 1;

const EVENT_KIND_NAMES = Object.keys(EVENT_KINDS) as [EventKind, ...EventKind[]];
const VERDICT_NAMES = Object.keys(VERDICTS) as [Verdict, ...Verdict[]];

/** Rule, exception and region names. */
export const NAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,63}$/;
export const NAME_HELP = "a name is 1 to 64 letters, digits and _ . : + - (not starting with . : + -)";

/** How a value looks in a message. */
export function describeValue(v: unknown): string {
  if (v === undefined) return "nothing";
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  return String(v);
}

/** A field whose value is parsed by `parse`; `problem` says what is wrong otherwise. */
function parsed<T>(parse: (v: unknown) => T | undefined, problem: (v: unknown) => string) {
  return z.unknown().transform((v, ctx): T => {
    const out = v === undefined ? undefined : parse(v);
    if (out === undefined) {
      ctx.addIssue({ code: "custom", message: v === undefined ? "required field" : problem(v) });
      return z.NEVER;
    }
    return out;
  });
}

const asList = (v: unknown) => (v === undefined || Array.isArray(v) ? v : [v]);

/** One value or a non-empty list of them; always a list once parsed. */
function oneOrList<T extends z.ZodType>(item: T) {
  return z.preprocess(asList, z.array(item).min(1).optional());
}

/** Like oneOrList, but required. */
function requiredOneOrList<T extends z.ZodType>(item: T) {
  return z.preprocess(asList, z.array(item).min(1));
}

const name = z
  .string()
  .regex(NAME_PATTERN, { error: (iss) => `${describeValue(iss.input)} is not valid: ${NAME_HELP}` });
const text = z.string().max(500);
const verdict = z.enum(VERDICT_NAMES);
const eventKind = z.enum(EVENT_KIND_NAMES);

const ADDRESS_MAX = Number.MAX_SAFE_INTEGER;

/** An address or size: an integer, or a string of hex digits after 0x. */
const address = parsed(
  (v) => {
    if (typeof v === "number") return Number.isSafeInteger(v) && v >= 0 ? v : undefined;
    if (typeof v === "string" && /^0x[0-9a-f]{1,14}$/i.test(v)) {
      const n = Number.parseInt(v.slice(2), 16);
      return n <= ADDRESS_MAX ? n : undefined;
    }
    return undefined;
  },
  (v) =>
    `${describeValue(v)} is not an address: expected an integer from 0 to 2^53-1, or a hex string such as "0x100000"`,
);

const vector = parsed(
  (v) => (typeof v === "number" || typeof v === "string" ? vectorNumber(v) : undefined),
  (v) =>
    `${describeValue(v)} is not a CPU exception vector: expected 0..31 or a name (${Object.keys(VECTOR_NAMES).join(", ")})`,
);

const cpl = parsed(
  (v) => (typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 3 ? v : undefined),
  (v) => `${describeValue(v)} is not a privilege level: expected 0, 1, 2 or 3`,
);

const msr = parsed(
  (v) => (typeof v === "number" || typeof v === "string" ? msrIndex(v) : undefined),
  (v) =>
    `${describeValue(v)} is not an MSR: expected an index from 0 to 0xffffffff or a name (${Object.keys(MSR_NAMES).join(", ")})`,
);

const symbol = z.string().min(1).max(256);

const object = parsed(
  integrityObject,
  (v) =>
    `${describeValue(v)} is not an integrity object: expected one of ${Object.keys(INTEGRITY_OBJECTS)
      .map((k) => k.toLowerCase())
      .join(", ")}`,
);

/** A value written (at most 8 bytes, little-endian): an integer, or up to 16 hex digits after 0x. */
const writtenValue = parsed(
  (v) => {
    if (typeof v === "number") return Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : undefined;
    if (typeof v === "string" && /^0x[0-9a-f]{1,16}$/i.test(v)) return BigInt(v);
    return undefined;
  },
  (v) =>
    `${describeValue(v)} is not a value: expected an integer from 0 to 2^53-1, or up to 16 hex digits such as "0x2"`,
);

function crBitName(table: Readonly<Record<string, number>>, reg: string) {
  return parsed(
    (v) => (typeof v === "string" && crBit(table, v) !== undefined ? v.toUpperCase() : undefined),
    (v) => `${describeValue(v)} is not a ${reg} bit: expected one of ${Object.keys(table).join(", ")}`,
  );
}

/**
 * A named region: a protected ELF section, a symbol's bytes (or a slice of
 * them), or a guest-physical address range. Exactly one form; load.ts checks.
 */
export const regionSchema = z.strictObject({
  section: z.string().min(1).max(256).optional(),
  symbol: symbol.optional(),
  offset: address.optional(),
  size: address.optional(),
  from: address.optional(),
  to: address.optional(),
});

export const ruleSchema = z.strictObject({
  name,
  event: oneOrList(eventKind),
  region: oneOrList(z.string()),
  vector: oneOrList(vector),
  object: oneOrList(object),
  cpl: oneOrList(cpl),
  msr: oneOrList(msr),
  originator: oneOrList(symbol),
  rip: z.strictObject({ from: address, to: address }).optional(),
  value: oneOrList(writtenValue),
  action: verdict,
  reason: text.optional(),
});

/** An allowlist exception: named originator routines may write a region or an MSR. */
export const exceptionSchema = z.strictObject({
  name,
  originator: requiredOneOrList(symbol),
  region: oneOrList(z.string()),
  msr: oneOrList(msr),
  value: oneOrList(writtenValue),
  action: z.enum(["allow", "log"]).default("allow"),
  reason: text.optional(),
});

const sealedTable = z.strictObject({
  seal: z.boolean().default(true),
  action: verdict.default("deny"),
});

export const objectsSchema = z.strictObject({
  msrs: z
    .array(
      z.strictObject({
        msr,
        action: verdict.default("deny"),
        reason: text.optional(),
      }),
    )
    .default([]),
  idt: sealedTable.optional(),
  gdt: sealedTable.optional(),
  paging: sealedTable.optional(),
  "pinned-cr": z
    .strictObject({
      cr0: oneOrList(crBitName(CR0_BITS, "CR0")),
      cr4: oneOrList(crBitName(CR4_BITS, "CR4")),
      action: verdict.default("deny"),
    })
    .optional(),
});

export const restartSchema = z.strictObject({
  limit: z.number().int().min(0).max(1000),
  window: z.number().int().min(1).max(86400).optional(),
  exhausted: z.enum(["halt", "pause"]).default("halt"),
});

const defaultsSchema = z.strictObject(
  Object.fromEntries(EVENT_KIND_NAMES.map((k) => [k, verdict.optional()])) as Record<
    EventKind,
    z.ZodOptional<typeof verdict>
  >,
);

export const policySchema = z.strictObject({
  version: z.literal(POLICY_FORMAT_VERSION),
  name: name.optional(),
  description: text.optional(),
  mode: z.enum(["enforce", "audit"]).default("enforce"),
  "kernel-patching": z.enum(["sanctioned", "immutable"]).default("sanctioned"),
  defaults: defaultsSchema.optional(),
  regions: z.record(z.string(), regionSchema).optional(),
  objects: objectsSchema.optional(),
  exceptions: z.array(exceptionSchema).optional(),
  rules: z.array(ruleSchema).optional(),
  restart: restartSchema.optional(),
});

/** A policy file's content once it has passed the schema. */
export type PolicySpec = z.output<typeof policySchema>;
export type RegionSpec = z.output<typeof regionSchema>;
export type RuleSpec = z.output<typeof ruleSchema>;
export type ExceptionSpec = z.output<typeof exceptionSchema>;

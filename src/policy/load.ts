/**
 * Loading a policy file: read it, parse YAML (or JSON), check it against the
 * schema and the file's own cross-references. Any problem is one
 * GuardvisorError CONFIG_INVALID (IO when the file cannot be read) whose
 * message is one line: `<file>:<line>:<col>: <field>: <problem>`.
 */
import { readFileSync, statSync } from "node:fs";
import { basename, extname } from "node:path";
import {
  isAlias,
  isMap,
  isPair,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  type YAMLError,
  type Node as YamlNode,
} from "yaml";
import type { z } from "zod";
import { ABI_CONSTANTS } from "../abi/guest-abi.js";
import { GuardvisorError } from "../errors.js";
import { describeValue, NAME_HELP, NAME_PATTERN, type PolicySpec, policySchema } from "./schema.js";

/** A field's place in the file: keys and list indexes from the top. */
export type FieldPath = ReadonlyArray<string | number>;

/** A loaded, schema-valid policy file. */
export interface PolicyFile {
  /** The path as given; messages name the file by it. */
  readonly path: string;
  /** The policy name: the file's `name`, else the file name without its extension. */
  readonly name: string;
  readonly spec: PolicySpec;
  /** The one-line error for a field of this file, with its line and column when known. */
  error(field: FieldPath, problem: string): GuardvisorError;
}

/** Policy files larger than this are refused before parsing. */
export const POLICY_MAX_BYTES = 1024 * 1024;
/** Deepest nesting of mappings and lists accepted. */
const MAX_DEPTH = 32;
/** Most values (after expanding aliases) accepted in one file. */
const MAX_VALUES = 100_000;

/** `rules[0].action`, `regions.kernel-text`, `regions[".text"]`; `(document)` for the whole file. */
export function formatFieldPath(path: FieldPath): string {
  if (path.length === 0) return "(document)";
  let out = "";
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(seg)) out += out === "" ? seg : `.${seg}`;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

interface Position {
  line: number;
  col: number;
}

function locatedError(file: string, pos: Position | undefined, field: string, problem: string): GuardvisorError {
  const where = pos ? `${file}:${pos.line}:${pos.col}` : file;
  const oneLine = problem.replace(/\s*\n\s*/g, " ").trim();
  return new GuardvisorError("CONFIG_INVALID", `${where}: ${field}: ${oneLine}`);
}

/** Where each value of the parsed data came from. */
interface Origin {
  node: YamlNode;
  /** For mappings: the key node of each key. */
  keys?: Map<string, YamlNode>;
  /** The node of each member (by key or index). */
  members: Map<string | number, YamlNode>;
}

class SourceMap {
  readonly origins = new WeakMap<object, Origin>();
  constructor(
    private readonly lines: LineCounter,
    readonly root: YamlNode | undefined,
  ) {}

  position(node: YamlNode | undefined): Position | undefined {
    const start = node?.range?.[0];
    return start === undefined ? undefined : this.lines.linePos(start);
  }

  /**
   * The node for `path` in `data` (or the deepest existing one above it), and
   * the path normalized for messages: a list index into a value that is not a
   * list (a single value given where a list is allowed) is dropped.
   */
  locate(data: unknown, path: FieldPath, key?: string): { path: Array<string | number>; node: YamlNode | undefined } {
    const out: Array<string | number> = [];
    let node = this.root;
    let value = data;
    for (const seg of path) {
      if (typeof seg === "number" && !Array.isArray(value)) continue;
      const origin = value !== null && typeof value === "object" ? this.origins.get(value) : undefined;
      const next = origin?.members.get(seg);
      out.push(seg);
      if (!next) return { path: out, node };
      node = next;
      value = (value as Record<string | number, unknown>)[seg];
    }
    if (key !== undefined) {
      out.push(key);
      const origin = value !== null && typeof value === "object" ? this.origins.get(value) : undefined;
      node = origin?.keys?.get(key) ?? node;
    }
    return { path: out, node };
  }
}

class Converter {
  private values = 0;
  constructor(
    private readonly doc: ReturnType<typeof parseDocument>,
    private readonly map: SourceMap,
    private readonly fail: (node: YamlNode | undefined, field: FieldPath, problem: string) => never,
  ) {}

  convert(input: unknown, path: FieldPath, depth: number): unknown {
    let node = input as YamlNode | null;
    if (node === null) return null;
    if (++this.values > MAX_VALUES) this.fail(node, path, `more than ${MAX_VALUES} values (aliases included)`);
    if (isAlias(node)) {
      const target = node.resolve(this.doc);
      if (!target) this.fail(node, path, `alias *${node.source} has no anchor`);
      node = target as YamlNode;
    }
    if (depth > MAX_DEPTH) this.fail(node, path, `nested more than ${MAX_DEPTH} levels deep`);
    if (isScalar(node)) {
      const v = node.value;
      if (v === null || typeof v === "string" || typeof v === "number" || typeof v === "boolean") return v;
      return this.fail(node, path, `unsupported value ${describeValue(v)}`);
    }
    if (isSeq(node)) {
      const out: unknown[] = [];
      const origin: Origin = { node, members: new Map() };
      node.items.forEach((item, i) => {
        const child = item as YamlNode | null;
        if (child) origin.members.set(i, child);
        out.push(this.convert(child, [...path, i], depth + 1));
      });
      this.map.origins.set(out, origin);
      return out;
    }
    if (isMap(node)) {
      const out: Record<string, unknown> = {};
      const origin: Origin = { node, members: new Map(), keys: new Map() };
      for (const pair of node.items) {
        if (!isPair(pair)) continue;
        const k = pair.key as YamlNode | null;
        if (!isScalar(k) || (typeof k.value !== "string" && typeof k.value !== "number")) {
          this.fail(k ?? node, path, "a mapping key must be a plain word");
        }
        const key = String(k.value);
        origin.keys?.set(key, k);
        const v = pair.value as YamlNode | null;
        origin.members.set(key, v ?? k);
        // defineProperty: a key such as "__proto__" is kept as data, never as a prototype.
        Object.defineProperty(out, key, {
          value: this.convert(v, [...path, key], depth + 1),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      this.map.origins.set(out, origin);
      return out;
    }
    return this.fail(node, path, "unsupported YAML node");
  }
}

/** The first line of a YAML error without the "at line L, column C" suffix. */
function yamlProblem(e: YAMLError, src: string): string {
  const first = e.message.split("\n")[0] ?? e.message;
  const text = first.replace(/ at line \d+, column \d+:?\s*$/, "");
  if (e.code === "MULTIPLE_DOCS") return "more than one YAML document in the file";
  if (e.code === "DUPLICATE_KEY") {
    const key = /^[^:\n]{1,64}/
      .exec(src.slice(e.pos[0]))?.[0]
      .trim()
      .replace(/^(["'])(.*)\1$/, "$2");
    return key ? `duplicate key ${JSON.stringify(key)}` : "duplicate key";
  }
  return text;
}

function isJsonFile(path: string): boolean {
  return extname(path).toLowerCase() === ".json";
}

/** Message for a schema issue (zod), with the offending value. */
function issueProblem(issue: z.core.$ZodIssue, value: unknown): string {
  if (value === undefined && issue.code !== "custom") return "required field";
  switch (issue.code) {
    case "invalid_type":
      return `expected ${issue.expected === "int" ? "an integer" : `a ${issue.expected === "record" || issue.expected === "object" ? "mapping" : issue.expected === "array" ? "list" : issue.expected}`}, got ${describeValue(value)}`;
    case "invalid_value":
      return issue.values.length === 1
        ? `must be ${String(issue.values[0])}, got ${describeValue(value)}`
        : `${describeValue(value)} is not one of ${issue.values.map(String).join(", ")}`;
    case "too_small":
      if (issue.origin === "array") return `needs at least ${String(issue.minimum)} item(s)`;
      if (issue.origin === "string") return "must not be empty";
      return `${describeValue(value)} is below the minimum ${String(issue.minimum)}`;
    case "too_big":
      if (issue.origin === "array") return `has more than ${String(issue.maximum)} items`;
      if (issue.origin === "string") return `is longer than ${String(issue.maximum)} characters`;
      return `${describeValue(value)} is above the maximum ${String(issue.maximum)}`;
    default:
      return issue.message;
  }
}

function valueAt(data: unknown, path: FieldPath): unknown {
  let v = data;
  for (const seg of path) {
    if (typeof seg === "number" && !Array.isArray(v)) continue;
    if (v === null || typeof v !== "object" || !Object.hasOwn(v, seg)) return undefined;
    v = (v as Record<string | number, unknown>)[seg];
  }
  return v;
}

/**
 * Parses and checks policy text. `path` names the file in messages (and a
 * `.json` path is parsed as strict JSON).
 * @throws GuardvisorError CONFIG_INVALID with one line naming file, line, column and field.
 */
export function parsePolicyText(text: string, path: string): PolicyFile {
  const src = text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  const lines = new LineCounter();
  const located = (pos: Position | undefined, field: string, problem: string) =>
    locatedError(path, pos, field, problem);

  if (Buffer.byteLength(src) > POLICY_MAX_BYTES) {
    throw located(undefined, "(document)", `the file is larger than ${POLICY_MAX_BYTES} bytes`);
  }
  if (src.trim() === "") throw located({ line: 1, col: 1 }, "(document)", "the file is empty; expected a mapping");
  let json: unknown;
  if (isJsonFile(path)) {
    try {
      json = JSON.parse(src);
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      const at = /position (\d+)/.exec(msg);
      const pos = at ? offsetPosition(src, Number(at[1])) : undefined;
      throw located(pos, "(syntax)", `invalid JSON: ${msg.replace(/ in JSON at position \d+.*$/, "")}`);
    }
  }

  let doc: ReturnType<typeof parseDocument>;
  try {
    doc = parseDocument(src, { lineCounter: lines, prettyErrors: false, uniqueKeys: true, strict: true });
  } catch (e) {
    if (e instanceof RangeError) throw located(undefined, "(syntax)", "the file is nested too deeply to parse");
    throw e;
  }
  const problem = doc.errors[0] ?? doc.warnings[0];
  let map: SourceMap;
  let data: unknown;
  if (problem && json !== undefined && problem.code !== "DUPLICATE_KEY") {
    // Valid JSON that the YAML parser does not take (duplicate keys aside): check it without positions.
    map = new SourceMap(lines, undefined);
    data = json;
  } else {
    if (problem) throw located(lines.linePos(problem.pos[0]), "(syntax)", yamlProblem(problem, src));
    if (doc.contents === null) {
      throw located({ line: 1, col: 1 }, "(document)", "the file is empty; expected a mapping");
    }
    const sourceMap = new SourceMap(lines, doc.contents as YamlNode);
    const converter = new Converter(doc, sourceMap, (node, field, msg) => {
      throw located(sourceMap.position(node), formatFieldPath(field), msg);
    });
    map = sourceMap;
    data = converter.convert(doc.contents, [], 0);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw located(
      map.position(map.root) ?? { line: 1, col: 1 },
      "(document)",
      `expected a mapping with version, rules, ...; got ${describeValue(data)}`,
    );
  }

  const fail = (field: FieldPath, msg: string, key?: string): GuardvisorError => {
    const { path: p, node } = map.locate(data, field, key);
    return located(map.position(node), formatFieldPath(p), msg);
  };

  // Region names become object keys: a name that is not a valid name never gets that far.
  const rawRegions = (data as Record<string, unknown>).regions;
  if (rawRegions !== null && typeof rawRegions === "object" && !Array.isArray(rawRegions)) {
    for (const name of Object.keys(rawRegions)) {
      if (name === "__proto__") throw fail(["regions"], `"__proto__" is reserved`, name);
      if (!NAME_PATTERN.test(name)) {
        throw fail(["regions"], `${JSON.stringify(name)} is not a valid region name: ${NAME_HELP}`, name);
      }
    }
  }

  const parsed = policySchema.safeParse(data);
  if (!parsed.success) {
    // One error: the issue that comes first in the file. Missing fields come
    // last: a misspelt field is both unknown and missing, and "unknown" says more.
    interface Candidate {
      path: FieldPath;
      key: string | undefined;
      problem: string;
      missing: boolean;
      offset: number;
    }
    const candidates: Candidate[] = [];
    const add = (path: FieldPath, key: string | undefined, problem: string, missing: boolean) => {
      const { node } = map.locate(data, path, key);
      candidates.push({ path, key, problem, missing, offset: node?.range?.[0] ?? Number.MAX_SAFE_INTEGER });
    };
    for (const issue of parsed.error.issues) {
      const path = issue.path.filter((p): p is string | number => typeof p !== "symbol");
      if (issue.code === "unrecognized_keys") {
        for (const key of issue.keys) add(path, key, unknownFieldProblem(path), false);
      } else {
        const value = valueAt(data, path);
        add(path, undefined, issueProblem(issue, value), value === undefined);
      }
    }
    candidates.sort((a, b) => Number(a.missing) - Number(b.missing) || a.offset - b.offset);
    const first = candidates[0]!;
    throw fail(first.path, first.problem, first.key);
  }
  const spec = parsed.data;
  checkCrossReferences(spec, fail);
  const name = spec.name ?? defaultName(path);
  return {
    path,
    name,
    spec,
    error: (field, msg) => fail(field, msg),
  };
}

function offsetPosition(src: string, offset: number): Position {
  const before = src.slice(0, offset);
  const line = before.split("\n").length;
  return { line, col: offset - before.lastIndexOf("\n") };
}

function unknownFieldProblem(path: FieldPath): string {
  const known = knownKeysFor(path);
  return known.length > 0 ? `unknown field (expected one of: ${known.join(", ")})` : "unknown field";
}

/** The fields the schema allows at a path (for "unknown field" messages). */
function knownKeysFor(path: FieldPath): string[] {
  let schema: unknown = policySchema;
  for (const seg of path) {
    schema = unwrap(schema);
    const def = (
      schema as { def?: { type?: string; shape?: Record<string, unknown>; element?: unknown; valueType?: unknown } }
    ).def;
    if (!def) return [];
    if (def.type === "object" && typeof seg === "string") schema = def.shape?.[seg];
    else if (def.type === "array") schema = def.element;
    else if (def.type === "record") schema = def.valueType;
    else return [];
  }
  const def = (unwrap(schema) as { def?: { type?: string; shape?: Record<string, unknown> } }).def;
  return def?.type === "object" && def.shape ? Object.keys(def.shape) : [];
}

/** Looks through optional, default and preprocess wrappers to the schema inside. */
function unwrap(schema: unknown): unknown {
  let s = schema as { def?: { type?: string; innerType?: unknown; out?: unknown; in?: unknown } } | undefined;
  for (let i = 0; i < 8 && s?.def; i++) {
    const d = s.def;
    if (d.type === "optional" || d.type === "default" || d.type === "nullable") s = d.innerType as typeof s;
    else if (d.type === "pipe") s = (d.out ?? d.in) as typeof s;
    else break;
  }
  return s;
}

function defaultName(path: string): string {
  const base = basename(path, extname(path));
  return NAME_PATTERN.test(base) ? base : "policy";
}

/** Checks within the file: region forms, references, names, rule shapes, size. */
function checkCrossReferences(
  spec: PolicySpec,
  fail: (field: FieldPath, msg: string, key?: string) => GuardvisorError,
): void {
  const regionNames = Object.keys(spec.regions ?? {});
  for (const [name, r] of Object.entries(spec.regions ?? {})) {
    const at = ["regions", name];
    const forms = [r.section !== undefined, r.symbol !== undefined, r.from !== undefined || r.to !== undefined];
    if (forms.filter(Boolean).length !== 1) {
      throw fail(at, "give exactly one of section, symbol, or from and to");
    }
    if ((r.offset !== undefined || r.size !== undefined) && r.symbol === undefined) {
      throw fail([...at, r.offset !== undefined ? "offset" : "size"], "offset and size only go with symbol");
    }
    if (r.size === 0) throw fail([...at, "size"], "must be above 0");
    if (forms[2]) {
      if (r.from === undefined) throw fail([...at, "from"], "required field (with to)");
      if (r.to === undefined) throw fail([...at, "to"], "required field (with from)");
      if (r.from >= r.to) throw fail([...at, "to"], `must be above from (0x${r.from.toString(16)})`);
    }
  }

  const names = new Map<string, string>();
  const claim = (field: FieldPath, name: string) => {
    const prior = names.get(name);
    if (prior) throw fail([...field, "name"], `duplicate name ${JSON.stringify(name)} (first used at ${prior})`);
    names.set(name, formatFieldPath(field));
  };
  const checkRegionRefs = (field: FieldPath, refs: string[] | undefined) => {
    refs?.forEach((ref, i) => {
      if (!Object.hasOwn(spec.regions ?? {}, ref)) {
        const declared = regionNames.length > 0 ? `declared: ${regionNames.join(", ")}` : "no regions are declared";
        throw fail([...field, "region", i], `unknown region ${JSON.stringify(ref)} (${declared})`);
      }
    });
  };
  const isRange = (ref: string) => spec.regions?.[ref]?.section === undefined;

  (spec.exceptions ?? []).forEach((x, i) => {
    const at = ["exceptions", i];
    claim(at, x.name);
    if ((x.region === undefined) === (x.msr === undefined)) {
      throw fail(at, "give exactly one of region (what the originator may write) or msr");
    }
    if (x.value && !x.region) throw fail([...at, "value"], "value needs region (it limits what a write stores)");
    checkRegionRefs(at, x.region);
  });

  (spec.rules ?? []).forEach((r, i) => {
    const at = ["rules", i];
    claim(at, r.name);
    checkRegionRefs(at, r.region);
    const events = r.event ?? [];
    const only = (field: keyof typeof r, allowed: readonly string[], hint: string) => {
      if (r[field] === undefined) return;
      if (events.length === 0 || events.some((e) => !allowed.includes(e))) {
        throw fail([...at, field], `${field} needs event: ${hint}`);
      }
    };
    only("vector", ["cpu-exception"], "cpu-exception (an integrity rule names what changed with object)");
    only("object", ["integrity"], "integrity");
    only("msr", ["msr-write"], "msr-write");
    only("region", ["protected-write", "integrity"], "protected-write (or integrity)");
    only("value", ["protected-write"], "protected-write");
    if (r.region?.some(isRange) && events.some((e) => e !== "protected-write")) {
      throw fail([...at, "region"], "a symbol or address region needs event: protected-write only");
    }
    if (r.originator !== undefined && r.rip !== undefined) {
      throw fail([...at, "rip"], "give originator or rip, not both");
    }
    if (r.rip && r.rip.from >= r.rip.to) {
      throw fail([...at, "rip", "to"], `must be above from (0x${r.rip.from.toString(16)})`);
    }
  });

  const msrs = spec.objects?.msrs ?? [];
  const seen = new Map<number, number>();
  msrs.forEach((m, i) => {
    const prior = seen.get(m.msr);
    if (prior !== undefined) {
      throw fail(
        ["objects", "msrs", i, "msr"],
        `MSR 0x${m.msr.toString(16)} is already listed at objects.msrs[${prior}]`,
      );
    }
    seen.set(m.msr, i);
  });
  const pinned = spec.objects?.["pinned-cr"];
  if (pinned && !pinned.cr0 && !pinned.cr4) throw fail(["objects", "pinned-cr"], "give cr0, cr4 or both");

  // Every exception, rule and MSR object becomes at least one compiled rule.
  const count = (spec.exceptions?.length ?? 0) + (spec.rules?.length ?? 0) + msrs.length;
  if (count > ABI_CONSTANTS.RULES_MAX) {
    const where = spec.rules ? ["rules"] : spec.exceptions ? ["exceptions"] : ["objects", "msrs"];
    throw fail(
      where,
      `${count} rules (exceptions, rules and MSR objects together), at most ${ABI_CONSTANTS.RULES_MAX}`,
    );
  }
}

/**
 * Reads and checks a policy file (YAML, or JSON when the name ends in .json).
 * @throws GuardvisorError IO when it cannot be read, CONFIG_INVALID when it is not a valid policy.
 */
export function loadPolicyFile(path: string): PolicyFile {
  let text: string;
  try {
    const size = statSync(path).size;
    if (size > POLICY_MAX_BYTES) {
      throw new GuardvisorError("CONFIG_INVALID", `${path}: the file is ${size} bytes, at most ${POLICY_MAX_BYTES}`);
    }
    text = readFileSync(path, "utf8");
  } catch (e) {
    if (e instanceof GuardvisorError) throw e;
    const err = e as NodeJS.ErrnoException;
    const why = err.code === "ENOENT" ? "no such file" : err.code === "EISDIR" ? "is a directory" : err.message;
    throw new GuardvisorError("IO", `cannot read policy ${path}: ${why}`);
  }
  return parsePolicyText(text, path);
}

/**
 * Resolving a policy file against one kernel image: region names become
 * protected sections and guest-physical ranges, originator routines become
 * RIP ranges, lists expand into one rule per combination, and objects become
 * MSR rules and typed fields. The result is the `Policy` that compilePolicy
 * turns into the binary rule table.
 */
import { ABI_CONSTANTS, type EventKind, type Verdict } from "../abi/guest-abi.js";
import {
  FAILSAFE_DEFAULTS,
  type MsrObject,
  type PinnedCrObject,
  type Policy,
  type PolicyObjects,
  type PolicyRule,
} from "../decide/policy.js";
import type { ElfImage, ElfSymbol } from "../elf/elf.js";
import { protectedRegions } from "../elf/kernel-image.js";
import type { FieldPath, PolicyFile } from "./load.js";
import { CR0_BITS, CR4_BITS, integrityObjectName, msrName } from "./names.js";
import type { PolicySpec, RuleSpec } from "./schema.js";

/** What resolving needs to know about a kernel. */
export interface PolicyKernel {
  /** Names the kernel in messages (usually its path). */
  readonly name: string;
  /** Its protected regions (guest-physical), as protectedRegions() gives them. */
  readonly regions: ReadonlyArray<{ name: string; start: number; end: number }>;
  readonly symbols: readonly ElfSymbol[];
  /** The guest-physical address of virtual [vaddr, vaddr+size), or undefined when no PT_LOAD holds it. */
  physical(vaddr: number, size: number): number | undefined;
  /**
   * Symbol values (and so originator RIP ranges) are offsets from this
   * virtual address (a stock Linux kernel's image base); absent: they are
   * addresses. A kernel with a base takes no explicit `rip` range.
   */
  readonly ripBase?: bigint;
}

/** A PolicyKernel for a parsed ELF image. */
export function policyKernel(image: ElfImage, name: string): PolicyKernel {
  return {
    name,
    regions: protectedRegions(image),
    symbols: image.symbols,
    physical(vaddr, size) {
      const seg = image.loadSegments.find((s) => vaddr >= s.vaddr && vaddr + size <= s.vaddr + s.memsz);
      return seg ? seg.paddr + (vaddr - seg.vaddr) : undefined;
    },
  };
}

/** A region name resolved: whole protected sections, or one range inside one section. */
type ResolvedRegion = { sections: string[] } | { sections: [string]; gpa: { from: number; to: number } };

const hex = (n: number) => `0x${n.toString(16)}`;

function regionList(kernel: PolicyKernel): string {
  return kernel.regions.map((r) => `${r.name} [${hex(r.start)}, ${hex(r.end)})`).join(", ") || "none";
}

function findSymbol(file: PolicyFile, kernel: PolicyKernel, field: FieldPath, name: string): ElfSymbol {
  const found = kernel.symbols.filter((s) => s.name === name);
  if (found.length === 0) throw file.error(field, `no symbol ${name} in kernel ${kernel.name}`);
  const distinct = new Set(found.map((s) => `${s.value}:${s.size}`));
  if (distinct.size > 1) {
    throw file.error(field, `${found.length} different symbols named ${name} in kernel ${kernel.name}`);
  }
  return found[0]!;
}

function resolveRegion(
  file: PolicyFile,
  kernel: PolicyKernel,
  name: string,
  spec: NonNullable<PolicySpec["regions"]>[string],
): ResolvedRegion {
  const at = ["regions", name];
  if (spec.section !== undefined) {
    const section = spec.section;
    if (!kernel.regions.some((r) => r.name === section)) {
      const known = kernel.regions.map((r) => r.name).join(", ") || "none";
      throw file.error(
        [...at, "section"],
        `no protected section ${section} in kernel ${kernel.name} (protected: ${known})`,
      );
    }
    return { sections: [section] };
  }
  let from: number;
  let to: number;
  let what: string;
  if (spec.symbol !== undefined) {
    const sym = findSymbol(file, kernel, [...at, "symbol"], spec.symbol);
    const offset = spec.offset ?? 0;
    const size = spec.size ?? sym.size - offset;
    if (spec.size === undefined && sym.size === 0) {
      throw file.error([...at, "symbol"], `symbol ${sym.name} has no size in kernel ${kernel.name}; give size`);
    }
    if (sym.size > 0 && offset + size > sym.size) {
      throw file.error(
        [...at, spec.size !== undefined ? "size" : "offset"],
        `offset ${hex(offset)} + size ${hex(size)} runs past the end of ${sym.name} (${hex(sym.size)} bytes)`,
      );
    }
    if (size <= 0) throw file.error([...at, "offset"], `offset ${hex(offset)} leaves nothing of ${sym.name}`);
    const phys = kernel.physical(sym.value + offset, size);
    if (phys === undefined) {
      throw file.error([...at, "symbol"], `${sym.name} at ${hex(sym.value)} is not in a loaded segment`);
    }
    from = phys;
    to = phys + size;
    what = `symbol ${sym.name}`;
  } else {
    from = spec.from!;
    to = spec.to!;
    what = `[${hex(from)}, ${hex(to)})`;
  }
  const inside = kernel.regions.find((r) => from >= r.start && to <= r.end);
  if (!inside) {
    throw file.error(
      at,
      `${what} (guest-physical [${hex(from)}, ${hex(to)})) is not inside one protected region of kernel ${kernel.name} ` +
        `(${regionList(kernel)}); writes there never reach the policy`,
    );
  }
  return { sections: [inside.name], gpa: { from, to } };
}

function originatorRange(file: PolicyFile, kernel: PolicyKernel, field: FieldPath, name: string) {
  const sym = findSymbol(file, kernel, field, name);
  if (sym.size === 0) {
    throw file.error(field, `symbol ${name} has no size in kernel ${kernel.name}; give a rip range instead`);
  }
  return { from: sym.value, to: sym.value + sym.size };
}

/** Groups region references into one entry per compiled rule: all whole sections together, each range alone. */
function regionGroups(refs: readonly ResolvedRegion[]): Array<Pick<PolicyRule, "regions" | "gpa">> {
  const sections = [...new Set(refs.filter((r) => !("gpa" in r)).flatMap((r) => r.sections))];
  const groups: Array<Pick<PolicyRule, "regions" | "gpa">> = [];
  if (sections.length > 0) groups.push({ regions: sections });
  for (const r of refs) if ("gpa" in r) groups.push({ regions: [...r.sections], gpa: { ...r.gpa } });
  return groups;
}

/** Every combination of the given alternatives (an absent list is one "any"). */
function expand<A, B, C>(as: readonly A[] | undefined, bs: readonly B[] | undefined, cs: readonly C[] | undefined) {
  const out: Array<[A | undefined, B | undefined, C | undefined]> = [];
  for (const a of as ?? [undefined])
    for (const b of bs ?? [undefined]) for (const c of cs ?? [undefined]) out.push([a, b, c]);
  return out;
}

/**
 * Resolves a loaded policy file against a kernel.
 * @throws GuardvisorError CONFIG_INVALID naming the file, line and field when a
 *   section or symbol is missing, a range lies outside protected memory, or the
 *   rules do not fit the table.
 */
export function resolvePolicy(file: PolicyFile, kernel: PolicyKernel): Policy {
  const spec = file.spec;
  const regions = new Map<string, ResolvedRegion>();
  for (const [name, r] of Object.entries(spec.regions ?? {})) regions.set(name, resolveRegion(file, kernel, name, r));
  const groupsOf = (refs: string[] | undefined) =>
    refs ? regionGroups(refs.map((ref) => regions.get(ref)!)) : undefined;
  const ripsOf = (field: FieldPath, names: string[] | undefined) =>
    names?.map((n, i) => originatorRange(file, kernel, [...field, "originator", i], n));

  const rules: PolicyRule[] = [];
  (spec.exceptions ?? []).forEach((x, i) => {
    const at = ["exceptions", i];
    const rips = ripsOf(at, x.originator);
    const kinds: EventKind[] = x.region ? ["protected-write"] : ["msr-write"];
    const victim = x.region ? `region ${x.region.join(", ")}` : `MSR ${x.msr!.map(msrName).join(", ")}`;
    const reason = x.reason ?? `exception: ${x.originator.join(", ")} may write ${victim}`;
    for (const [group, rip, msr] of expand(groupsOf(x.region), rips, x.msr)) {
      for (const value of x.value ?? [undefined]) {
        rules.push({ name: x.name, kinds, ...group, rip, msr, value, verdict: x.action, reason });
      }
    }
  });

  (spec.rules ?? []).forEach((r, i) => {
    const at = ["rules", i];
    if (r.rip && kernel.ripBase !== undefined) {
      throw file.error(
        [...at, "rip"],
        `kernel ${kernel.name}'s code lies above 2^53, beyond a policy's numbers: name the code by symbol with originator`,
      );
    }
    const rip = r.rip ? [r.rip] : ripsOf(at, r.originator);
    const reason = r.reason ?? describeRule(r);
    for (const [group, range, msr] of expand(groupsOf(r.region), rip, r.msr)) {
      const rule: PolicyRule = { name: r.name, verdict: r.action, reason };
      if (r.event) rule.kinds = [...new Set(r.event)];
      if (group?.regions) rule.regions = group.regions;
      if (group?.gpa) rule.gpa = group.gpa;
      if (r.vector) rule.vectors = [...new Set(r.vector)];
      if (r.object) rule.objects = [...new Set(r.object)];
      if (r.cpl) rule.cpl = [...new Set(r.cpl)];
      if (range) rule.rip = range;
      if (msr !== undefined) rule.msr = msr;
      for (const value of r.value ?? [undefined]) rules.push(value === undefined ? rule : { ...rule, value });
    }
  });

  const objects = resolveObjects(spec);
  objects.msrs.forEach((m, i) => {
    rules.push({
      name: `msr:${m.name}`,
      kinds: ["msr-write"],
      msr: m.index,
      verdict: m.action,
      reason: spec.objects?.msrs[i]?.reason ?? `write to MSR ${m.name}`,
    });
  });
  // Sealed vCPU state is checked on exits; an integrity event names the object that changed.
  const C = ABI_CONSTANTS;
  const sealedObjects: [string, { action: Verdict } | undefined, number[], string][] = [
    ["idt", objects.idt, [C.INTEGRITY_IDTR], "the IDTR no longer points at the sealed IDT"],
    ["gdt", objects.gdt, [C.INTEGRITY_GDTR], "the GDTR no longer points at the sealed GDT"],
    [
      "paging",
      objects.paging,
      [C.INTEGRITY_PAGING, C.INTEGRITY_CR3],
      "the translation of sealed kernel memory would change (a page-table entry or CR3)",
    ],
    ["pinned-cr", objects.pinnedCr, [C.INTEGRITY_CR0, C.INTEGRITY_CR4], "a pinned control-register bit was cleared"],
  ];
  for (const [name, object, objectIds, reason] of sealedObjects) {
    if (object) {
      rules.push({ name: `object:${name}`, kinds: ["integrity"], objects: objectIds, verdict: object.action, reason });
    }
  }

  // Drop absent optional fields so equal policies compare equal.
  for (const rule of rules) {
    for (const k of Object.keys(rule) as Array<keyof PolicyRule>) if (rule[k] === undefined) delete rule[k];
  }
  if (rules.length > ABI_CONSTANTS.RULES_MAX) {
    throw file.error(
      spec.rules ? ["rules"] : ["exceptions"],
      `${rules.length} rules once lists of regions, originators and MSRs are expanded, at most ${ABI_CONSTANTS.RULES_MAX}`,
    );
  }

  const defaults: Record<EventKind, Verdict> = { ...FAILSAFE_DEFAULTS };
  for (const [k, v] of Object.entries(spec.defaults ?? {})) if (v) defaults[k as EventKind] = v;

  const policy: Policy = { name: file.name, rules, defaults };
  if (spec.mode === "audit") policy.mode = "audit";
  if (spec["kernel-patching"] === "immutable") policy.kernelPatching = "immutable";
  if (kernel.ripBase !== undefined) policy.ripBase = kernel.ripBase;
  if (spec.objects) policy.objects = objects;
  if (spec.restart) {
    policy.restart = { limit: spec.restart.limit, exhausted: spec.restart.exhausted };
    if (spec.restart.window !== undefined) policy.restart.windowSeconds = spec.restart.window;
  }
  return policy;
}

const objectName = (n: number) => (integrityObjectName(n) ?? String(n)).toLowerCase();

/** A reason for a rule that gives none: what it matches, in words. */
function describeRule(r: RuleSpec): string {
  const parts = [r.event ? r.event.join(" or ") : "any event"];
  if (r.region) parts.push(`in ${r.region.join(", ")}`);
  if (r.vector) parts.push(`vector ${r.vector.join(", ")}`);
  if (r.object) parts.push(`object ${r.object.map(objectName).join(", ")}`);
  if (r.cpl) parts.push(`at CPL ${r.cpl.join(", ")}`);
  if (r.msr) parts.push(`to MSR ${r.msr.map(msrName).join(", ")}`);
  if (r.originator) parts.push(`from ${r.originator.join(", ")}`);
  if (r.rip) parts.push(`from RIP [${hex(r.rip.from)}, ${hex(r.rip.to)})`);
  return parts.join(" ");
}

function resolveObjects(spec: PolicySpec): PolicyObjects {
  const o = spec.objects;
  const msrs: MsrObject[] = (o?.msrs ?? []).map((m) => ({ index: m.msr, name: msrName(m.msr), action: m.action }));
  const out: PolicyObjects = { msrs };
  if (o?.idt) out.idt = { seal: o.idt.seal, action: o.idt.action };
  if (o?.gdt) out.gdt = { seal: o.gdt.seal, action: o.gdt.action };
  if (o?.paging) out.paging = { seal: o.paging.seal, action: o.paging.action };
  const pin = o?.["pinned-cr"];
  if (pin) {
    const cr0Bits = [...new Set(pin.cr0 ?? [])];
    const cr4Bits = [...new Set(pin.cr4 ?? [])];
    const mask = (table: Readonly<Record<string, number>>, bits: string[]) =>
      bits.reduce((m, b) => (m | (1 << table[b]!)) >>> 0, 0);
    const pinned: PinnedCrObject = {
      cr0: mask(CR0_BITS, cr0Bits),
      cr4: mask(CR4_BITS, cr4Bits),
      cr0Bits,
      cr4Bits,
      action: pin.action,
    };
    out.pinnedCr = pinned;
  }
  return out;
}

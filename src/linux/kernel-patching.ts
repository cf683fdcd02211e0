/**
 * Linux's sanctioned runtime code patching, recognised from the VMM with no
 * guest patch. Static keys, static calls and ftrace all change code through
 * text_poke(): __text_poke() maps the target page at a second, temporary
 * address in the lower half (its own mm) and copies the new bytes there with
 * memcpy. So, at the GPA level, a sanctioned poke is a ring-0 write that:
 *  - is done by memcpy (RIP in __memcpy, memcpy_erms or memcpy_orig), a leaf
 *    routine, called from __text_poke: the return address on top of the
 *    stack lies in __text_poke;
 *  - goes through a lower-half alias (the destination register, RDI, has
 *    bit 63 clear: kernel addresses have it set);
 *  - lands inside a known patch site: a jump-label site (`__jump_table`), a
 *    static-call site or trampoline (`.static_call_sites`, `__SCT__*`) or an
 *    ftrace call site (`__mcount_loc`), within PATCH_SITE_BYTES of its start
 *    (text_poke_bp writes an INT3, the tail, then the first byte).
 * Anything else (a module writing through its own alias, CR0.WP cleared, a
 * different routine) is not sanctioned. kprobes, which may patch any
 * instruction, are not recognised: under a seal they are denied.
 *
 * The site lists come from the vmlinux file (read before the guest runs), the
 * routine bounds from the symbols: both are bounded like any other input.
 */
import { GuardvisorError } from "../errors.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import type { Regs } from "../kvm/structs.js";
import { readVirtual } from "../vmm/paging.js";
import { readKernelElf } from "./kernel-ranges.js";
import type { SystemMap } from "./system-map.js";

/** A patch writes at most this many bytes from a site's start (a 5-byte jump, call or NOP). */
export const PATCH_SITE_BYTES = 5n;
/** Sites read at most (each table), so a hostile image cannot make the list unbounded. */
export const MAX_PATCH_SITES = 1_000_000;

/** [start, end) of kernel virtual addresses. */
export type VirtualSpan = readonly [bigint, bigint];

/** What the vCPU thread needs to recognise a sanctioned poke (structured-clone friendly). */
export interface KernelPatching {
  /** The copy routines text_poke writes with. */
  copiers: VirtualSpan[];
  /** __text_poke. */
  poker: VirtualSpan;
  /** Patch-site start addresses, sorted ascending. */
  sites: BigUint64Array;
}

const invalid = (what: string) => new GuardvisorError("LINUX_IMAGE_INVALID", what);

/** [symbol, next higher symbol): a routine's extent from the symbols alone (kallsyms gives no sizes). */
export function symbolSpan(map: SystemMap, name: string): VirtualSpan | undefined {
  const sym = map.byName.get(name);
  if (!sym) return undefined;
  const next = map.symbols.find((s) => s.address > sym.address);
  return next ? [sym.address, next.address] : undefined;
}

/** The bytes of the vmlinux at kernel virtual [start, end): the allocated section that holds them. */
function bytesAt(
  vmlinux: Uint8Array,
  sections: ReturnType<typeof readKernelElf>["sections"],
  start: bigint,
  end: bigint,
) {
  const s = sections.find((x) => x.type !== 8 && start >= x.addr && end <= x.addr + x.size);
  if (!s) return undefined;
  const from = s.offset + (start - s.addr);
  const to = from + (end - start);
  if (to > BigInt(vmlinux.length)) throw invalid(`the vmlinux's section ${s.name} lies past the file's end`);
  return Buffer.from(vmlinux.buffer, vmlinux.byteOffset + Number(from), Number(to - from));
}

/** A table between two symbols, as a buffer (empty when the symbols or its bytes are missing). */
function table(
  vmlinux: Uint8Array,
  map: SystemMap,
  sections: ReturnType<typeof readKernelElf>["sections"],
  name: string,
) {
  const start = map.byName.get(`__start_${name}`)?.address;
  const stop = map.byName.get(`__stop_${name}`)?.address;
  if (start === undefined || stop === undefined || stop <= start) return { start: 0n, bytes: Buffer.alloc(0) };
  return { start, bytes: bytesAt(vmlinux, sections, start, stop) ?? Buffer.alloc(0) };
}

/**
 * The sanctioned-patching facts of a kernel: its patch sites and the
 * routines text_poke uses. Undefined when the symbols lack the routines (then
 * no write counts as sanctioned).
 */
export function kernelPatching(vmlinux: Uint8Array, map: SystemMap): KernelPatching | undefined {
  const poker = symbolSpan(map, "__text_poke");
  const copiers = ["__memcpy", "memcpy_erms", "memcpy_orig"]
    .map((n) => symbolSpan(map, n))
    .filter((s): s is VirtualSpan => s !== undefined);
  if (!poker || copiers.length === 0) return undefined;
  const { sections } = readKernelElf(vmlinux);
  const sites: bigint[] = [];
  const add = (a: bigint) => {
    if (sites.length >= MAX_PATCH_SITES) throw invalid(`the kernel lists more than ${MAX_PATCH_SITES} patch sites`);
    sites.push(a);
  };
  // struct jump_entry { s32 code; s32 target; long key; }: code is relative to the entry.
  const jumps = table(vmlinux, map, sections, "__jump_table");
  for (let at = 0; at + 16 <= jumps.bytes.length; at += 16) {
    add(jumps.start + BigInt(at) + BigInt(jumps.bytes.readInt32LE(at)));
  }
  // struct static_call_site { s32 addr; s32 key; }: addr is relative to the entry.
  const calls = table(vmlinux, map, sections, "static_call_sites");
  for (let at = 0; at + 8 <= calls.bytes.length; at += 8) {
    add(calls.start + BigInt(at) + BigInt(calls.bytes.readInt32LE(at)));
  }
  // __mcount_loc: absolute addresses of the ftrace call sites.
  const mcount = table(vmlinux, map, sections, "mcount_loc");
  for (let at = 0; at + 8 <= mcount.bytes.length; at += 8) add(mcount.bytes.readBigUInt64LE(at));
  // Static-call trampolines are patched in place.
  for (const s of map.symbols) if (s.name.startsWith("__SCT__")) add(s.address);
  sites.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return { copiers, poker, sites: BigUint64Array.from(sites) };
}

const inSpan = (s: VirtualSpan, a: bigint) => a >= s[0] && a < s[1];

/** Is `va` inside a patch site (within PATCH_SITE_BYTES of a site's start)? */
export function atPatchSite(sites: BigUint64Array, va: bigint): boolean {
  let lo = 0;
  let hi = sites.length - 1;
  let best = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if ((sites[mid] as bigint) <= va) {
      best = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return best >= 0 && va - (sites[best] as bigint) < PATCH_SITE_BYTES;
}

/** Why a ring-0 write to sealed code is (or is not) text_poke's: `undefined` when it is. */
export function notSanctioned(
  p: KernelPatching,
  w: { cpl: number; regs: Regs; writerRip: bigint; cr3: bigint; target: bigint | undefined; memory: GuestMemory },
): string | undefined {
  if (w.cpl !== 0) return `written from ring ${w.cpl}`;
  if (!p.copiers.some((c) => inSpan(c, w.writerRip))) return "not written by memcpy";
  if (w.regs.rdi >> 63n !== 0n) return "not written through a lower-half alias";
  const top = readVirtual(w.memory, w.cr3, w.regs.rsp, 8);
  if (top.length !== 8) return "the stack top cannot be read";
  const ret = Buffer.from(top).readBigUInt64LE(0);
  if (!inSpan(p.poker, ret)) return "memcpy not called from __text_poke";
  if (w.target === undefined || !atPatchSite(p.sites, w.target))
    return "not at a static key, static call or ftrace site";
  return undefined;
}

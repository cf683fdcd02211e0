/**
 * A stock Linux kernel as a policy file sees it (src/policy/resolve.ts): its
 * sealed sections as regions (`section: .text`, `section: .rodata`), and its
 * symbols from kallsyms or a System.map, so that a region can be a symbol's
 * bytes (`symbol: sys_call_table`) and a rule can name its writer
 * (`originator: text_poke_bp`).
 *
 * The kernel's addresses lie above 2^63, beyond the numbers a policy holds:
 * symbol values are offsets from the kernel image's base
 * (__START_KERNEL_map), and the resolved policy says so (`ripBase`), so its
 * compiled RIP ranges are the real addresses. Neither kallsyms nor a
 * System.map has sizes: a symbol's size is the distance to the next symbol
 * at a higher address, as the kernel's own symbol+off/size reckons it.
 */
import type { ElfSymbol } from "../elf/elf.js";
import type { PolicyKernel } from "../policy/resolve.js";
import type { KernelRanges } from "./kernel-ranges.js";
import type { SystemMap } from "./system-map.js";

/** __START_KERNEL_map: the x86-64 kernel image's virtual base. */
export const LINUX_IMAGE_BASE = 0xffffffff80000000n;
/** The image lies within this many bytes above its base (KERNEL_IMAGE_SIZE at most). */
const IMAGE_SPAN = 1n << 30n;

const STT_OBJECT = 1;
const STT_FUNC = 2;
const STB_LOCAL = 0;
const STB_GLOBAL = 1;

/** The kernel image's symbols as ELF symbols, valued as offsets from LINUX_IMAGE_BASE, sized to the next symbol. */
export function imageSymbols(map: SystemMap): ElfSymbol[] {
  const s = map.symbols;
  const out: ElfSymbol[] = [];
  for (let i = 0; i < s.length; i++) {
    const sym = s[i] as SystemMap["symbols"][number];
    const off = sym.address - LINUX_IMAGE_BASE;
    if (off < 0n || off >= IMAGE_SPAN) continue; // per-CPU offsets, modules, absolute values
    let j = i + 1;
    while (j < s.length && (s[j] as SystemMap["symbols"][number]).address === sym.address) j++;
    const next = s[j]?.address;
    const size = next !== undefined && next - sym.address < IMAGE_SPAN ? Number(next - sym.address) : 0;
    out.push({
      name: sym.name,
      value: Number(off),
      size,
      type: /^[tTwW]$/.test(sym.type) ? STT_FUNC : STT_OBJECT,
      bind: sym.type === sym.type.toUpperCase() ? STB_GLOBAL : STB_LOCAL,
      sectionIndex: 0,
    });
  }
  return out;
}

/** The kernel's sealed sections and (with `map`) its image symbols, for resolving a policy file. */
export function linuxPolicyKernel(ranges: KernelRanges, name: string, map?: SystemMap): PolicyKernel {
  return {
    name,
    regions: ranges.ranges.map((r) => ({ name: r.name, start: r.start, end: r.end })),
    symbols: map ? imageSymbols(map) : [],
    ripBase: LINUX_IMAGE_BASE,
    // Only the sealed ranges are mapped here: a symbol elsewhere is not in protected memory.
    physical(offset, size) {
      const va = LINUX_IMAGE_BASE + BigInt(offset);
      const r = ranges.ranges.find((x) => va >= x.vstart && va + BigInt(size) <= x.vstart + BigInt(x.end - x.start));
      return r ? r.start + Number(va - r.vstart) : undefined;
    },
  };
}

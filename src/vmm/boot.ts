/**
 * The guest boot ABI (docs/guest-abi.md): the boot area the VMM writes into
 * guest RAM before the first instruction, and the initial vCPU state.
 */
import { BOOT_INFO, ABI_CONSTANTS as C } from "../abi/guest-abi.js";
import { writeScalar } from "../abi/layout.js";
import { configError } from "../errors.js";
import type { GuestMemory } from "../kvm/guest-memory.js";
import type { Regs, Segment, Sregs } from "../kvm/structs.js";
import { zeroRegs } from "../kvm/structs.js";

export const MIB = 1024 * 1024;
export const MIN_MEM_MIB = 4;
export const MAX_MEM_MIB = 4096;

const PTE_P = 0x1n;
const PTE_RW = 0x2n;
const PDE_PS = 0x80n;
const TWO_MIB = 2 * MIB;

export const CR0_BOOT = 0x80050033n; // PE MP ET NE WP AM PG
export const CR4_BOOT = 0x620n; // PAE OSFXSR OSXMMEXCPT
export const EFER_BOOT = 0xd01n; // SCE LME LMA NXE

export interface BootParams {
  memSize: number;
  cmdline: string;
  role: number;
  vmId: number;
  idcGpa?: number;
  idcSize?: number;
}

/** Check a memory size in MiB: a clear error naming the field. */
export function validateMemMiB(mib: number, field = "--mem"): number {
  if (!Number.isInteger(mib) || mib < MIN_MEM_MIB || mib > MAX_MEM_MIB || mib % 2 !== 0) {
    throw configError(
      field,
      `memory size ${mib} MiB must be an even whole number of MiB from ${MIN_MEM_MIB} to ${MAX_MEM_MIB}`,
    );
  }
  return mib * MIB;
}

export function validateCmdline(cmdline: string): void {
  if (cmdline.length >= C.BOOT_CMDLINE_MAX) {
    throw configError("cmdline", `longer than ${C.BOOT_CMDLINE_MAX - 1} bytes`);
  }
  if (!/^[\x20-\x7e]*$/.test(cmdline)) throw configError("cmdline", "only printable ASCII is allowed");
}

/**
 * Identity-map [0, mapSize): page 0 not present, the first 2 MiB in 4 KiB pages,
 * the rest in 2 MiB pages; present, writable, supervisor-only.
 */
export function writePageTables(mem: GuestMemory, mapSize: number): void {
  const gib = Math.ceil(mapSize / (1024 * MIB));
  if (gib > 4) throw configError("memory", "the boot page tables map at most 4 GiB");
  mem.fill(C.BOOT_PML4, C.BOOT_PT_LOW + 0x1000 - C.BOOT_PML4, 0);
  mem.writeU64(C.BOOT_PML4, BigInt(C.BOOT_PDPT) | PTE_P | PTE_RW);
  for (let g = 0; g < gib; g++) {
    mem.writeU64(C.BOOT_PDPT + 8 * g, BigInt(C.BOOT_PD + 0x1000 * g) | PTE_P | PTE_RW);
  }
  const pages2m = Math.ceil(mapSize / TWO_MIB);
  for (let i = 0; i < pages2m; i++) {
    const entry = i === 0 ? BigInt(C.BOOT_PT_LOW) | PTE_P | PTE_RW : BigInt(i * TWO_MIB) | PTE_P | PTE_RW | PDE_PS;
    mem.writeU64(C.BOOT_PD + 8 * i, entry);
  }
  const lowPages = Math.min(512, Math.ceil(mapSize / 4096));
  for (let p = 1; p < lowPages; p++) mem.writeU64(C.BOOT_PT_LOW + 8 * p, BigInt(p * 4096) | PTE_P | PTE_RW);
}

/** Null, 64-bit kernel code (0x08), kernel data (0x10). */
export const BOOT_GDT = [0n, 0x00af9b000000ffffn, 0x00cf93000000ffffn] as const;

export function writeBootArea(mem: GuestMemory, p: BootParams): void {
  validateCmdline(p.cmdline);
  const mapSize = Math.max(p.memSize, (p.idcGpa ?? 0) + (p.idcSize ?? 0));
  writePageTables(mem, mapSize);
  BOOT_GDT.forEach((d, i) => {
    mem.writeU64(C.BOOT_GDT + 8 * i, d);
  });
  const cmd = Buffer.from(`${p.cmdline}\0`, "latin1");
  mem.fill(C.BOOT_CMDLINE, C.BOOT_CMDLINE_MAX, 0);
  mem.write(C.BOOT_CMDLINE, cmd);
  const info = mem.slice(C.BOOT_INFO, BOOT_INFO.size);
  info.fill(0);
  const v = new DataView(info.buffer, info.byteOffset, info.byteLength);
  const set = (name: string, value: number | bigint) => {
    const f = BOOT_INFO.byName.get(name);
    if (!f || typeof f.type !== "string") throw new Error(`boot info has no scalar field ${name}`);
    writeScalar(v, f.offset, f.type, value);
  };
  set("magic", C.BOOT_MAGIC);
  set("version", C.BOOT_VERSION);
  set("mem_size", p.memSize);
  set("cmdline_gpa", C.BOOT_CMDLINE);
  set("cmdline_len", p.cmdline.length);
  set("role", p.role);
  set("pml4_gpa", C.BOOT_PML4);
  set("pt_low_gpa", C.BOOT_PT_LOW);
  set("idc_gpa", p.idcGpa ?? 0);
  set("idc_size", p.idcSize ?? 0);
  set("vm_id", p.vmId);
}

function flatSegment(selector: number, code: boolean): Segment {
  return {
    base: 0n,
    limit: 0xffffffff,
    selector,
    type: code ? 11 : 3,
    present: 1,
    dpl: 0,
    db: code ? 0 : 1,
    s: 1,
    l: code ? 1 : 0,
    g: 1,
    avl: 0,
    unusable: 0,
  };
}

/** What a 64-bit entry with flat segments differs in: the selectors, the GDT, the control registers. */
export interface LongModeEntry {
  codeSelector: number;
  dataSelector: number;
  gdtBase: number;
  gdtEntries: number;
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
}

/** Special registers for a 64-bit entry on flat segments (no IDT yet), on top of what KVM reports after reset. */
export function longModeSregs(current: Sregs, e: LongModeEntry): Sregs {
  const data = flatSegment(e.dataSelector, false);
  return {
    ...current,
    cs: flatSegment(e.codeSelector, true),
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    gdt: { base: BigInt(e.gdtBase), limit: e.gdtEntries * 8 - 1 },
    idt: { base: 0n, limit: 0 },
    cr0: e.cr0,
    cr3: e.cr3,
    cr4: e.cr4,
    efer: e.efer,
  };
}

/** The special registers at the entry point, on top of what KVM reports after reset. */
export function bootSregs(current: Sregs): Sregs {
  return longModeSregs(current, {
    codeSelector: C.SEL_KERNEL_CODE,
    dataSelector: C.SEL_KERNEL_DATA,
    gdtBase: C.BOOT_GDT,
    gdtEntries: BOOT_GDT.length,
    cr0: CR0_BOOT,
    cr3: BigInt(C.BOOT_PML4),
    cr4: CR4_BOOT,
    efer: EFER_BOOT,
  });
}

export function bootRegs(entry: number): Regs {
  const r = zeroRegs();
  r.rip = BigInt(entry);
  r.rdi = BigInt(C.BOOT_INFO);
  r.rsp = BigInt(C.BOOT_STACK_TOP);
  r.rflags = 2n;
  return r;
}

/**
 * Booting a bzImage through the x86 64-bit boot protocol
 * (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): the memory plan,
 * the zero page (struct boot_params), the command line, the initrd, identity
 * page tables, a boot GDT and the vCPU state at the 64-bit entry point.
 *
 * Guest-physical layout (docs/linux-guests.md):
 *   0x0500  boot GDT: null, null, __BOOT_CS 0x10 (64-bit code), __BOOT_DS 0x18 (flat data)
 *   0x7000  zero page (struct boot_params, 4 KiB)
 *   0x8ff0  initial stack pointer (the kernel sets its own at once)
 *   0x9000  PML4, 0xa000 PDPT, 0xb000-0xefff four page directories: [0, 4 GiB) identity-mapped in 2 MiB pages
 *   0x20000 command line (NUL-terminated)
 *   16 MiB  the protected-mode kernel (LINUX_LOAD_ADDR), fixed; it needs init_size bytes from there.
 *           Or, decompressed on the host (vmlinux.ts), the vmlinux segments at their physical
 *           addresses, entered at startup_64: what the bzImage's decompressor would have produced.
 *   top     the initrd, page-aligned, as high as RAM and initrd_addr_max allow
 * Everything below 1 MiB lies in memory Linux keeps reserved once it runs.
 */
import { configError } from "../errors.js";
import type { Regs, Sregs } from "../kvm/structs.js";
import { zeroRegs } from "../kvm/structs.js";
import { insideLab } from "../lab/fallback.js";
import { longModeSregs } from "../vmm/boot.js";
import { type BzImage, HDR, LOADFLAG_LOADED_HIGH } from "./bzimage.js";
import type { Vmlinux } from "./vmlinux.js";

export const MIB = 1024 * 1024;
export const LINUX_GDT = 0x500;
export const LINUX_ZERO_PAGE = 0x7000;
export const LINUX_STACK_TOP = 0x8ff0;
export const LINUX_PML4 = 0x9000;
export const LINUX_PDPT = 0xa000;
export const LINUX_PD = 0xb000;
export const LINUX_CMDLINE = 0x20000;
/** Room reserved for the command line at LINUX_CMDLINE. */
export const LINUX_CMDLINE_ROOM = 0x10000;
/** Where the protected-mode kernel is loaded: 16 MiB, the x86-64 default LOAD_PHYSICAL_ADDR. */
export const LINUX_LOAD_ADDR = 16 * MIB;
/** The 64-bit entry point is this far into the protected-mode kernel. */
export const LINUX_ENTRY_64_OFFSET = 0x200;

/** Boot GDT selectors the 64-bit protocol names. */
export const BOOT_CS = 0x10;
export const BOOT_DS = 0x18;
export const LINUX_BOOT_GDT = [0n, 0n, 0x00af9b000000ffffn, 0x00cf93000000ffffn] as const;

/** Low RAM ends where the EBDA would begin; 0x9fc00-0xfffff is reserved (VGA hole, BIOS). */
export const LOW_RAM_END = 0x9fc00;
export const HIGH_RAM_START = 0x100000;

export const MIN_LINUX_MEM_MIB = 64;
/** RAM stays below the 32-bit hole (LAPIC, IOAPIC and the TSS area KVM needs at 0xfffbd000). */
export const MAX_LINUX_MEM_MIB = 3072;

/** struct boot_params fields the loader fills that are not in the setup header. */
export const BP = {
  EXT_RAMDISK_IMAGE: 0x0c0,
  EXT_RAMDISK_SIZE: 0x0c4,
  EXT_CMD_LINE_PTR: 0x0c8,
  E820_ENTRIES: 0x1e8,
  VID_MODE: 0x1fa,
  E820_TABLE: 0x2d0,
  SIZE: 0x1000,
} as const;
export const E820_ENTRY_SIZE = 20;
export const E820_MAX_ENTRIES = 128;
export const E820_RAM = 1;
export const E820_RESERVED = 2;

const PTE_P = 0x1n;
const PTE_RW = 0x2n;
const PDE_PS = 0x80n;

export const CR0_PE = 0x1n;
export const CR0_ET = 0x10n;
export const CR0_NE = 0x20n;
export const CR0_PG = 0x80000000n;
export const CR4_PAE = 0x20n;
export const EFER_LME = 0x100n;
export const EFER_LMA = 0x400n;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

export interface LinuxBootConfig {
  /** Guest RAM in bytes (a whole number of MiB, MIN_LINUX_MEM_MIB..MAX_LINUX_MEM_MIB). */
  memSize: number;
  /** The whole kernel command line. */
  cmdline: string;
  initrd?: Uint8Array;
  /** The kernel decompressed on the host: load its segments and enter startup_64 directly. */
  vmlinux?: Vmlinux;
}

export interface LinuxBootPlan {
  memSize: number;
  kernelAddr: number;
  /** First byte after [kernelAddr, kernelAddr + init_size): nothing else may be placed below it above kernelAddr. */
  kernelEnd: number;
  entry: number;
  cmdline: string;
  initrd: { addr: number; size: number } | undefined;
  e820: E820Entry[];
  /** Set when the kernel was decompressed on the host (entry is its startup_64). */
  vmlinux: Vmlinux | undefined;
}

/** The command line defaults: the serial console, no KASLR, a reboot through the keyboard controller, no I/O delay port. */
export const DEFAULT_LINUX_CMDLINE = "console=ttyS0 earlyprintk=serial nokaslr reboot=k panic=-1 io_delay=none pci=off";

/**
 * What the command line gets in the lab: there the guest's local APIC timer
 * never fires, so the kernel keeps the PIT (`nolapic`; docs/linux-guests.md).
 * Empty elsewhere.
 */
export function labLinuxCmdline(): string {
  return insideLab() ? " nolapic" : "";
}

/** Check a RAM size in MiB for a Linux guest: a clear error naming the field. */
export function validateLinuxMemMiB(mib: number, field = "--mem"): number {
  if (!Number.isInteger(mib) || mib < MIN_LINUX_MEM_MIB || mib > MAX_LINUX_MEM_MIB || mib % 2 !== 0) {
    throw configError(
      field,
      `a Linux guest's memory ${mib} MiB must be an even whole number of MiB from ${MIN_LINUX_MEM_MIB} to ${MAX_LINUX_MEM_MIB}`,
    );
  }
  return mib * MIB;
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** Where everything goes, checked against the image's limits and RAM. Pure: nothing is written. */
export function planLinuxBoot(image: BzImage, cfg: LinuxBootConfig): LinuxBootPlan {
  const { memSize } = cfg;
  validateLinuxMemMiB(memSize / MIB, "memory");
  if (!image.relocatable && image.prefAddress !== BigInt(LINUX_LOAD_ADDR)) {
    throw configError(
      "kernel",
      `the kernel is not relocatable and wants ${hex(Number(image.prefAddress))}; Guardvisor loads at ${hex(LINUX_LOAD_ADDR)}`,
    );
  }
  if (LINUX_LOAD_ADDR % image.kernelAlignment !== 0) {
    throw configError(
      "kernel",
      `the kernel needs ${hex(image.kernelAlignment)} alignment; the load address ${hex(LINUX_LOAD_ADDR)} does not have it`,
    );
  }
  const vmlinux = cfg.vmlinux;
  const kernelEnd = Math.max(LINUX_LOAD_ADDR + image.initSize, vmlinux?.end ?? 0);
  if (vmlinux && vmlinux.start < LINUX_LOAD_ADDR) {
    throw configError(
      "kernel",
      `the decompressed kernel starts at ${hex(vmlinux.start)}, below ${hex(LINUX_LOAD_ADDR)}`,
    );
  }
  if (kernelEnd > memSize) {
    throw configError(
      "memory",
      `${memSize / MIB} MiB is too small: the kernel needs [${hex(LINUX_LOAD_ADDR)}, ${hex(kernelEnd)}) while it starts`,
    );
  }
  const cmdline = cfg.cmdline;
  if (!/^[\x20-\x7e]*$/.test(cmdline)) throw configError("cmdline", "only printable ASCII is allowed");
  const maxCmd = Math.min(image.cmdlineSize, LINUX_CMDLINE_ROOM - 1);
  if (cmdline.length > maxCmd) {
    throw configError("cmdline", `${cmdline.length} bytes, the kernel accepts at most ${maxCmd}`);
  }
  let initrd: LinuxBootPlan["initrd"];
  if (cfg.initrd && cfg.initrd.length > 0) {
    const size = cfg.initrd.length;
    const top = Math.min(memSize, image.initrdAddrMax + 1);
    const addr = Math.floor((top - size) / 4096) * 4096;
    if (top - size < kernelEnd || addr < kernelEnd) {
      throw configError(
        "initrd",
        `${size} bytes do not fit between the kernel's end ${hex(kernelEnd)} and ${hex(top)}: give the guest more memory`,
      );
    }
    initrd = { addr, size };
  }
  const e820: E820Entry[] = [
    { addr: 0, size: LOW_RAM_END, type: E820_RAM },
    { addr: LOW_RAM_END, size: HIGH_RAM_START - LOW_RAM_END, type: E820_RESERVED },
    { addr: HIGH_RAM_START, size: memSize - HIGH_RAM_START, type: E820_RAM },
  ];
  return {
    memSize,
    kernelAddr: LINUX_LOAD_ADDR,
    kernelEnd,
    entry: vmlinux ? vmlinux.entry : LINUX_LOAD_ADDR + LINUX_ENTRY_64_OFFSET,
    cmdline,
    initrd,
    e820,
    vmlinux,
  };
}

/** The zero page for `plan`: the image's setup header plus what the loader fills in. */
export function buildZeroPage(image: BzImage, plan: LinuxBootPlan): Uint8Array {
  const zp = new Uint8Array(BP.SIZE);
  const v = new DataView(zp.buffer);
  zp.set(image.header, HDR.SETUP_SECTS);
  v.setUint16(BP.VID_MODE, 0xffff, true); // "normal" text mode: the kernel does not touch video
  v.setUint8(HDR.TYPE_OF_LOADER, 0xff); // a loader with no assigned id
  v.setUint8(HDR.LOADFLAGS, image.loadflags & LOADFLAG_LOADED_HIGH);
  v.setUint32(HDR.CODE32_START, plan.kernelAddr, true);
  v.setUint32(HDR.CMD_LINE_PTR, LINUX_CMDLINE, true);
  v.setUint32(BP.EXT_CMD_LINE_PTR, 0, true);
  v.setUint32(HDR.RAMDISK_IMAGE, plan.initrd?.addr ?? 0, true);
  v.setUint32(HDR.RAMDISK_SIZE, plan.initrd?.size ?? 0, true);
  v.setUint32(BP.EXT_RAMDISK_IMAGE, 0, true);
  v.setUint32(BP.EXT_RAMDISK_SIZE, 0, true);
  v.setUint32(HDR.HARDWARE_SUBARCH, 0, true); // a normal PC
  v.setBigUint64(HDR.SETUP_DATA, 0n, true);
  if (plan.e820.length > E820_MAX_ENTRIES) throw configError("memory", "too many e820 entries");
  v.setUint8(BP.E820_ENTRIES, plan.e820.length);
  plan.e820.forEach((e, i) => {
    const at = BP.E820_TABLE + i * E820_ENTRY_SIZE;
    v.setBigUint64(at, BigInt(e.addr), true);
    v.setBigUint64(at + 8, BigInt(e.size), true);
    v.setUint32(at + 16, e.type, true);
  });
  return zp;
}

/** Identity page tables for [0, 4 GiB) in 2 MiB pages, as [gpa, bytes] pieces. */
export function buildPageTables(): Array<[number, Uint8Array]> {
  const pml4 = new Uint8Array(4096);
  const pdpt = new Uint8Array(4096);
  const pds = new Uint8Array(4 * 4096);
  new DataView(pml4.buffer).setBigUint64(0, BigInt(LINUX_PDPT) | PTE_P | PTE_RW, true);
  const pdptv = new DataView(pdpt.buffer);
  const pdv = new DataView(pds.buffer);
  for (let g = 0; g < 4; g++) pdptv.setBigUint64(8 * g, BigInt(LINUX_PD + 4096 * g) | PTE_P | PTE_RW, true);
  for (let i = 0; i < 4 * 512; i++)
    pdv.setBigUint64(8 * i, (BigInt(i) * BigInt(2 * MIB)) | PTE_P | PTE_RW | PDE_PS, true);
  return [
    [LINUX_PML4, pml4],
    [LINUX_PDPT, pdpt],
    [LINUX_PD, pds],
  ];
}

/** Write everything `plan` places into guest RAM (`ram` is RAM from guest-physical 0, memSize bytes). */
export function writeLinuxBoot(ram: Uint8Array, image: BzImage, plan: LinuxBootPlan, initrd?: Uint8Array): void {
  if (ram.length < plan.memSize)
    throw configError("memory", `RAM of ${ram.length} bytes, the plan needs ${plan.memSize}`);
  const gdt = new DataView(ram.buffer, ram.byteOffset + LINUX_GDT, LINUX_BOOT_GDT.length * 8);
  LINUX_BOOT_GDT.forEach((d, i) => {
    gdt.setBigUint64(8 * i, d, true);
  });
  ram.set(buildZeroPage(image, plan), LINUX_ZERO_PAGE);
  for (const [gpa, bytes] of buildPageTables()) ram.set(bytes, gpa);
  ram.fill(0, LINUX_CMDLINE, LINUX_CMDLINE + LINUX_CMDLINE_ROOM);
  ram.set(Buffer.from(plan.cmdline, "latin1"), LINUX_CMDLINE);
  if (plan.vmlinux) {
    for (const seg of plan.vmlinux.segments) {
      ram.set(seg.data, seg.paddr);
      ram.fill(0, seg.paddr + seg.data.length, seg.paddr + seg.memsz);
    }
  } else {
    ram.set(image.kernel, plan.kernelAddr);
  }
  if (plan.initrd) {
    if (!initrd || initrd.length !== plan.initrd.size) throw configError("initrd", "the initrd changed after planning");
    ram.set(initrd, plan.initrd.addr);
  }
}

/** The special registers at the 64-bit entry: long mode, paging on the identity tables, the boot GDT. */
export function linuxBootSregs(current: Sregs): Sregs {
  return longModeSregs(current, {
    codeSelector: BOOT_CS,
    dataSelector: BOOT_DS,
    gdtBase: LINUX_GDT,
    gdtEntries: LINUX_BOOT_GDT.length,
    cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
    cr3: BigInt(LINUX_PML4),
    cr4: CR4_PAE,
    efer: EFER_LME | EFER_LMA,
  });
}

/** The registers at the 64-bit entry: RIP at load address + 0x200, RSI at the zero page, interrupts off. */
export function linuxBootRegs(plan: LinuxBootPlan): Regs {
  const r = zeroRegs();
  r.rip = BigInt(plan.entry);
  r.rsi = BigInt(LINUX_ZERO_PAGE);
  r.rsp = BigInt(LINUX_STACK_TOP);
  r.rflags = 2n;
  return r;
}

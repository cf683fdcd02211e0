/**
 * Test helpers for policy files: a small kernel image whose virtual addresses
 * differ from its physical ones, and the paths of the policy fixtures.
 */
import { join } from "node:path";
import {
  PF_R,
  PF_W,
  PF_X,
  parseElf,
  SHF_ALLOC,
  SHF_EXECINSTR,
  SHF_WRITE,
  STT_FUNC,
  STT_NOTYPE,
  STT_OBJECT,
} from "../../src/elf/elf.js";
import { packageRoot } from "../../src/kvm/native.js";
import { type PolicyKernel, policyKernel } from "../../src/policy/resolve.js";
import { buildElf } from "./elf-fixtures.js";

/** Virtual base of the test kernel; it is loaded at physical PHYS. */
export const VIRT = 0x40100000;
export const PHYS = 0x100000;
export const TEXT = VIRT;
export const RODATA = VIRT + 0x1000;
export const DATA = VIRT + 0x2000;
/** Physical = virtual - DELTA. */
export const DELTA = VIRT - PHYS;

export const SYMBOLS = {
  kmain: { value: TEXT + 0x10, size: 0x40 },
  gv_legit_patch: { value: TEXT + 0x100, size: 0x40 },
  gv_check_credentials: { value: TEXT + 0x200, size: 0x20 },
  gv_init_msrs: { value: TEXT + 0x300, size: 0x30 },
  gv_patch_target: { value: TEXT + 0x400, size: 0x10 },
  syscall_table: { value: RODATA + 0x40, size: 0x40 },
  counter: { value: DATA, size: 8 },
} as const;

/** A kernel with .text, .rodata (protected) and .data, and the symbols above. */
export function testKernel(opts: { withLegitPatch?: boolean } = {}): PolicyKernel {
  return policyKernel(parseElf(testKernelBytes(opts)), "test-kernel.elf");
}

/** The test kernel's ELF file bytes. */
export function testKernelBytes(opts: { withLegitPatch?: boolean } = {}): Uint8Array {
  const withLegit = opts.withLegitPatch ?? true;
  const fn = (name: keyof typeof SYMBOLS) => ({ name, ...SYMBOLS[name], type: STT_FUNC });
  const built = buildElf({
    entry: TEXT,
    segments: [
      { flags: PF_R | PF_X, vaddr: TEXT, paddr: TEXT - DELTA, filesz: 0x1000 },
      { flags: PF_R, vaddr: RODATA, paddr: RODATA - DELTA, filesz: 0x100 },
      { flags: PF_R | PF_W, vaddr: DATA, paddr: DATA - DELTA, filesz: 0x80, memsz: 0x1000 },
    ],
    sections: [
      { name: ".text", flags: SHF_ALLOC | SHF_EXECINSTR, addr: TEXT, size: 0x1000 },
      { name: ".rodata", flags: SHF_ALLOC, addr: RODATA, size: 0x100 },
      { name: ".data", flags: SHF_ALLOC | SHF_WRITE, addr: DATA, size: 0x80 },
    ],
    symbols: [
      { name: "_start", value: TEXT, type: STT_NOTYPE },
      fn("kmain"),
      ...(withLegit ? [fn("gv_legit_patch")] : []),
      fn("gv_check_credentials"),
      fn("gv_init_msrs"),
      fn("gv_patch_target"),
      { name: "syscall_table", ...SYMBOLS.syscall_table, type: STT_OBJECT },
      { name: "counter", ...SYMBOLS.counter, type: STT_OBJECT },
    ],
  });
  return built.bytes;
}

export const FIXTURES = join(packageRoot(), "test", "fixtures", "policies");
export const SHIPPED = join(packageRoot(), "policies");

/** Every valid policy file the tests start from: the shipped ones and the fixtures. */
export const GOOD_POLICY_FILES = [
  join(SHIPPED, "default.yaml"),
  join(SHIPPED, "legit-patch.yaml"),
  join(SHIPPED, "audit-mode.yaml"),
  join(FIXTURES, "good", "everything.yaml"),
  join(FIXTURES, "good", "everything.json"),
];
export const GV_KERNEL = join(packageRoot(), "guest", "out", "gv-kernel.elf");

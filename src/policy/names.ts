/**
 * Architectural names a policy may use instead of numbers: CPU exception
 * vectors, MSRs, CR0/CR4 bits, and the objects an integrity event names.
 */
import { ABI_CONSTANTS } from "../abi/guest-abi.js";

/** Exception vectors by mnemonic (Intel SDM vol. 3, table 6-1). */
export const VECTOR_NAMES: Readonly<Record<string, number>> = {
  DE: 0,
  DB: 1,
  NMI: 2,
  BP: 3,
  OF: 4,
  BR: 5,
  UD: 6,
  NM: 7,
  DF: 8,
  TS: 10,
  NP: 11,
  SS: 12,
  GP: 13,
  PF: 14,
  MF: 16,
  AC: 17,
  MC: 18,
  XM: 19,
  VE: 20,
  CP: 21,
  HV: 28,
  VC: 29,
  SX: 30,
};

/** The MSRs a guest kernel is commonly attacked through (and a few more). */
export const MSR_NAMES: Readonly<Record<string, number>> = {
  APIC_BASE: 0x1b,
  SYSENTER_CS: 0x174,
  SYSENTER_ESP: 0x175,
  SYSENTER_EIP: 0x176,
  MISC_ENABLE: 0x1a0,
  DEBUGCTL: 0x1d9,
  PAT: 0x277,
  EFER: 0xc0000080,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SFMASK: 0xc0000084,
  FS_BASE: 0xc0000100,
  GS_BASE: 0xc0000101,
  KERNEL_GS_BASE: 0xc0000102,
  TSC_AUX: 0xc0000103,
};

/** CR0 bits by name. */
export const CR0_BITS: Readonly<Record<string, number>> = {
  PE: 0,
  MP: 1,
  EM: 2,
  TS: 3,
  ET: 4,
  NE: 5,
  WP: 16,
  AM: 18,
  NW: 29,
  CD: 30,
  PG: 31,
};

/** CR4 bits by name. */
export const CR4_BITS: Readonly<Record<string, number>> = {
  VME: 0,
  PVI: 1,
  TSD: 2,
  DE: 3,
  PSE: 4,
  PAE: 5,
  MCE: 6,
  PGE: 7,
  PCE: 8,
  OSFXSR: 9,
  OSXMMEXCPT: 10,
  UMIP: 11,
  LA57: 12,
  VMXE: 13,
  SMXE: 14,
  FSGSBASE: 16,
  PCIDE: 17,
  OSXSAVE: 18,
  SMEP: 20,
  SMAP: 21,
  PKE: 22,
  CET: 23,
  PKS: 24,
};

/** What an integrity event found changed (its object number, carried in the context's vector field). */
export const INTEGRITY_OBJECTS: Readonly<Record<string, number>> = {
  CR0: ABI_CONSTANTS.INTEGRITY_CR0,
  CR4: ABI_CONSTANTS.INTEGRITY_CR4,
  IDTR: ABI_CONSTANTS.INTEGRITY_IDTR,
  GDTR: ABI_CONSTANTS.INTEGRITY_GDTR,
  PAGING: ABI_CONSTANTS.INTEGRITY_PAGING,
  CR3: ABI_CONSTANTS.INTEGRITY_CR3,
};

const has = (table: Readonly<Record<string, number>>, key: string) => Object.hasOwn(table, key);

/** The name of integrity object `n` (upper case, as in INTEGRITY_OBJECTS), or undefined. */
export function integrityObjectName(n: number): string | undefined {
  return Object.entries(INTEGRITY_OBJECTS).find(([, v]) => v === n)?.[0];
}

/** An integrity object by name (`paging`, `cr3`, any case); undefined when unknown. */
export function integrityObject(v: unknown): number | undefined {
  if (typeof v !== "string") return undefined;
  const key = v.toUpperCase();
  return has(INTEGRITY_OBJECTS, key) ? INTEGRITY_OBJECTS[key] : undefined;
}

/** A vector by number or mnemonic (`GP`, `#GP`, any case); undefined when unknown. */
export function vectorNumber(v: number | string): number | undefined {
  if (typeof v === "number") return Number.isInteger(v) && v >= 0 && v <= 31 ? v : undefined;
  const key = v.replace(/^#/, "").toUpperCase();
  return has(VECTOR_NAMES, key) ? VECTOR_NAMES[key] : undefined;
}

/** An MSR by index or name (`LSTAR`, `IA32_LSTAR`, any case); undefined when unknown. */
export function msrIndex(v: number | string): number | undefined {
  if (typeof v === "number") return Number.isInteger(v) && v >= 0 && v <= 0xffffffff ? v : undefined;
  const key = v.toUpperCase().replace(/^IA32_/, "");
  return has(MSR_NAMES, key) ? MSR_NAMES[key] : undefined;
}

/** The canonical name of an MSR index, or its index in hex. */
export function msrName(index: number): string {
  const found = Object.entries(MSR_NAMES).find(([, n]) => n === index);
  return found ? found[0] : `0x${index.toString(16)}`;
}

/** A control-register bit number by name (any case); undefined when unknown. */
export function crBit(table: Readonly<Record<string, number>>, name: string): number | undefined {
  const key = name.toUpperCase();
  return has(table, key) ? table[key] : undefined;
}

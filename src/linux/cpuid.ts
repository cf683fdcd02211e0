/**
 * The CPUID a Linux guest sees: what KVM supports (KVM_GET_SUPPORTED_CPUID),
 * with the hypervisor bit and the KVM paravirt leaves (0x40000000 "KVMKVMKVM",
 * 0x40000001 features: kvm-clock and friends) present, and the APIC ids of
 * the one vCPU made consistent with the in-kernel local APIC (id = vCPU id).
 */
import { GuardvisorError } from "../errors.js";
import { kernelLayout } from "../kvm/native.js";

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export const KVM_CPUID_SIGNATURE = 0x40000000;
export const KVM_CPUID_FEATURES = 0x40000001;
/** "KVMKVMKVM\0\0\0" as EBX, ECX, EDX. */
export const KVM_SIGNATURE_REGS = [0x4b4d564b, 0x564b4d56, 0x0000004d] as const;
export const CPUID_1_ECX_HYPERVISOR = 1 << 31;
/** CMPXCHG16B. */
export const CPUID_1_ECX_CX16 = 1 << 13;
/** XSAVE/XRSTOR/XSETBV/XGETBV (Linux derives AVX and everything above it from it). */
export const CPUID_1_ECX_XSAVE = 1 << 26;
/** KVM_FEATURE_CLOCKSOURCE2: kvm-clock through the new MSRs. */
export const KVM_FEATURE_CLOCKSOURCE2 = 1 << 3;

const REGS = ["eax", "ebx", "ecx", "edx"] as const;

/** The entries of a kvm_cpuid2 buffer. */
export function decodeCpuid(buf: Uint8Array): CpuidEntry[] {
  const L = kernelLayout("kvm_cpuid2");
  const E = kernelLayout("kvm_cpuid_entry2");
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = v.getUint32(L.off("nent"), true);
  if (n > (buf.length - L.off("entries")) / E.size) {
    throw new GuardvisorError("INTERNAL", `kvm_cpuid2 claims ${n} entries, the buffer holds fewer`);
  }
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = L.off("entries") + i * E.size;
    const e = {
      function: v.getUint32(at + E.off("function"), true),
      index: v.getUint32(at + E.off("index"), true),
      flags: v.getUint32(at + E.off("flags"), true),
    } as CpuidEntry;
    for (const r of REGS) e[r] = v.getUint32(at + E.off(r), true);
    out.push(e);
  }
  return out;
}

/** A kvm_cpuid2 buffer holding `entries`, for KVM_SET_CPUID2. */
export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array {
  const L = kernelLayout("kvm_cpuid2");
  const E = kernelLayout("kvm_cpuid_entry2");
  const buf = new Uint8Array(L.off("entries") + entries.length * E.size);
  const v = new DataView(buf.buffer);
  v.setUint32(L.off("nent"), entries.length, true);
  entries.forEach((e, i) => {
    const at = L.off("entries") + i * E.size;
    v.setUint32(at + E.off("function"), e.function, true);
    v.setUint32(at + E.off("index"), e.index, true);
    v.setUint32(at + E.off("flags"), e.flags, true);
    for (const r of REGS) v.setUint32(at + E.off(r), e[r] >>> 0, true);
  });
  return buf;
}

export interface LinuxCpuidOptions {
  /**
   * Hide the features PVM cannot run in guest ring 0, where its instruction
   * emulator handles what the kernel executes (measured with Debian's 6.1
   * kernel; each ended in KVM_EXIT_INTERNAL_ERROR, emulation failure):
   * CMPXCHG16B (`lock cmpxchg16b` in SLUB's this_cpu_cmpxchg_double; without
   * CX16 Linux takes the slab lock) and XSAVE (`xrstor64` in the FPU's boot
   * init; without it Linux saves the FPU with FXSAVE and turns AVX off).
   */
  pvmSafe?: boolean;
}

/**
 * The CPUID for vCPU `vcpuId` of a one-vCPU Linux guest, from the supported
 * entries. When KVM lists no 0x40000001 leaf, kvm-clock alone is offered.
 */
export function linuxCpuid(supported: readonly CpuidEntry[], vcpuId = 0, o: LinuxCpuidOptions = {}): CpuidEntry[] {
  const out = supported.map((e) => ({ ...e }));
  const leaf = (fn: number) => out.filter((e) => e.function === fn);
  for (const e of leaf(1)) {
    e.ecx = (e.ecx | CPUID_1_ECX_HYPERVISOR) >>> 0;
    if (o.pvmSafe) e.ecx = (e.ecx & ~(CPUID_1_ECX_CX16 | CPUID_1_ECX_XSAVE)) >>> 0;
    // Initial APIC id in EBX[31:24]; one logical processor in EBX[23:16].
    e.ebx = ((e.ebx & 0x0000ffff) | (1 << 16) | ((vcpuId & 0xff) << 24)) >>> 0;
  }
  for (const fn of [0xb, 0x1f]) for (const e of leaf(fn)) e.edx = vcpuId; // x2APIC id
  let sig = leaf(KVM_CPUID_SIGNATURE)[0];
  if (!sig) {
    sig = { function: KVM_CPUID_SIGNATURE, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 };
    out.push(sig);
  }
  sig.eax = Math.max(sig.eax, KVM_CPUID_FEATURES);
  [sig.ebx, sig.ecx, sig.edx] = KVM_SIGNATURE_REGS;
  if (leaf(KVM_CPUID_FEATURES).length === 0) {
    out.push({
      function: KVM_CPUID_FEATURES,
      index: 0,
      flags: 0,
      eax: KVM_FEATURE_CLOCKSOURCE2,
      ebx: 0,
      ecx: 0,
      edx: 0,
    });
  }
  return out;
}

export { hostKvmIsPvm } from "../lab/fallback.js";

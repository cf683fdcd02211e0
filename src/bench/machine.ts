/** The machine a benchmark ran on, for the report (docs/performance.md, "Machine"). */
import { existsSync } from "node:fs";
import { cpus, release, totalmem } from "node:os";

export interface MachineFacts {
  cpu: string;
  /** Logical CPUs the host kernel offers this process's machine. */
  cpus: number;
  memGiB: number;
  kernel: string;
  /** The KVM vendor module: kvm_intel (VMX), kvm_amd (SVM), kvm_pvm (no hardware virtualization), or none found. */
  kvmModule: string;
  node: string;
  /**
   * Where KVM ran: `native` (hardware virtualisation), `pvm` (KVM without it:
   * guest ring 0 emulated) or `lab` (inside the lab's emulated machine).
   * Anything but native is emulated: its figures are ratios only.
   */
  host: BenchHost;
  emulated: boolean;
}

export type BenchHost = "native" | "pvm" | "lab";

const KVM_MODULES = ["kvm_intel", "kvm_amd", "kvm_pvm"] as const;

export function machineFacts(): MachineFacts {
  const list = cpus();
  const kvmModule = KVM_MODULES.find((m) => existsSync(`/sys/module/${m}`)) ?? "none found";
  const host: BenchHost = process.env.GV_LAB === "1" ? "lab" : kvmModule === "kvm_pvm" ? "pvm" : "native";
  return {
    cpu: list[0]?.model.trim() || "unknown",
    cpus: list.length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    kvmModule,
    node: process.version,
    host,
    emulated: host !== "native",
  };
}

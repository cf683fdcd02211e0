/**
 * Typed errors with stable codes. Every error that crosses a layer edge is a
 * GuardvisorError whose `code` scripts may rely on; the message is for people.
 */

export const ERROR_CODES = {
  /** /dev/kvm missing, not accessible, or lacking a capability we need. */
  KVM_UNAVAILABLE: "KVM_UNAVAILABLE",
  /** The lab (the emulated machine with KVM) cannot start: a package is missing or too old. */
  LAB_UNAVAILABLE: "LAB_UNAVAILABLE",
  /** The lab started but did not run the command to its end (it crashed, or timed out). */
  LAB_FAILED: "LAB_FAILED",
  /** A KVM ioctl failed (the native layer reports errno and ioctl name). */
  KVM_IOCTL: "KVM_IOCTL",
  /** A guest-physical access outside guest RAM or a mapping. */
  GUEST_MEMORY_BOUNDS: "GUEST_MEMORY_BOUNDS",
  /** A kernel image that is not an acceptable ELF64 x86-64 executable. */
  ELF_INVALID: "ELF_INVALID",
  /** A kernel image whose segments do not fit guest RAM or overlap. */
  ELF_LAYOUT: "ELF_LAYOUT",
  /** A Linux kernel image that is not a bzImage Guardvisor can boot (x86 boot protocol 2.12+, 64-bit entry). */
  LINUX_IMAGE_INVALID: "LINUX_IMAGE_INVALID",
  /** A System.map file that cannot be read as "address type name" lines. */
  LINUX_SYSTEM_MAP_INVALID: "LINUX_SYSTEM_MAP_INVALID",
  /** Bad configuration: the message names the field. */
  CONFIG_INVALID: "CONFIG_INVALID",
  /** Unknown scenario name. */
  SCENARIO_UNKNOWN: "SCENARIO_UNKNOWN",
  /** No run answers on the control socket given. */
  CONTROL_UNAVAILABLE: "CONTROL_UNAVAILABLE",
  /** A file that could not be read or written. */
  IO: "IO",
  /** The guest misbehaved in a way the VMM had to stop (bad boot state, etc). */
  GUEST_FAULT: "GUEST_FAULT",
  /** An invariant inside Guardvisor broke: a bug. */
  INTERNAL: "INTERNAL",
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class GuardvisorError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "GuardvisorError";
    this.code = code;
  }
}

export function isGuardvisorError(e: unknown): e is GuardvisorError {
  return e instanceof GuardvisorError;
}

/** Shorthand constructors used at layer edges. */
export const elfError = (msg: string) => new GuardvisorError("ELF_INVALID", msg);
export const configError = (field: string, msg: string) => new GuardvisorError("CONFIG_INVALID", `${field}: ${msg}`);

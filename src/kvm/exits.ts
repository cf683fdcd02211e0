/**
 * VM exits as a discriminated union, decoded from the shared kvm_run page.
 * Decoding reads only; answering an exit (IN data, MMIO read data, MSR result)
 * goes through the methods of RunPage.
 */
import { GuardvisorError } from "../errors.js";
import { K, kernelLayout } from "./native.js";

export type VcpuExit =
  | { kind: "io-out"; port: number; size: number; count: number; data: Uint8Array }
  | { kind: "io-in"; port: number; size: number; count: number; data: Uint8Array }
  | { kind: "mmio-write"; gpa: number; len: number; data: Uint8Array }
  | { kind: "mmio-read"; gpa: number; len: number; data: Uint8Array }
  | { kind: "hlt" }
  | { kind: "shutdown" }
  | { kind: "debug"; exception: number; pc: bigint; dr6: bigint; dr7: bigint }
  | { kind: "msr-write"; index: number; value: bigint }
  | { kind: "msr-read"; index: number }
  | { kind: "internal-error"; suberror: number; data: bigint[] }
  | { kind: "fail-entry"; reason: bigint }
  | { kind: "system-event"; type: number }
  | { kind: "interrupted" }
  | { kind: "unknown"; reason: number };

export type ExitKind = VcpuExit["kind"];

/** The kvm_run page of one vCPU, shared with the kernel. */
export class RunPage {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  private readonly o: {
    reason: number;
    immediateExit: number;
    ioDir: number;
    ioSize: number;
    ioPort: number;
    ioCount: number;
    ioDataOffset: number;
    mmioAddr: number;
    mmioData: number;
    mmioLen: number;
    mmioIsWrite: number;
    dbgException: number;
    dbgPc: number;
    dbgDr6: number;
    dbgDr7: number;
    intSub: number;
    intNdata: number;
    intData: number;
    failReason: number;
    msrError: number;
    msrIndex: number;
    msrData: number;
    sysType: number;
    validRegs: number;
    dirtyRegs: number;
  };
  /** Where KVM_CAP_SYNC_REGS keeps kvm_regs and kvm_sregs in this page. */
  readonly syncRegsAt: number;
  readonly syncSregsAt: number;
  private readonly k: Record<string, number>;

  constructor(buffer: ArrayBuffer) {
    this.bytes = new Uint8Array(buffer);
    this.view = new DataView(buffer);
    const L = kernelLayout("kvm_run");
    this.o = {
      reason: L.off("exit_reason"),
      immediateExit: L.off("immediate_exit"),
      ioDir: L.off("io.direction"),
      ioSize: L.off("io.size"),
      ioPort: L.off("io.port"),
      ioCount: L.off("io.count"),
      ioDataOffset: L.off("io.data_offset"),
      mmioAddr: L.off("mmio.phys_addr"),
      mmioData: L.off("mmio.data"),
      mmioLen: L.off("mmio.len"),
      mmioIsWrite: L.off("mmio.is_write"),
      dbgException: L.off("debug.exception"),
      dbgPc: L.off("debug.pc"),
      dbgDr6: L.off("debug.dr6"),
      dbgDr7: L.off("debug.dr7"),
      intSub: L.off("internal.suberror"),
      intNdata: L.off("internal.ndata"),
      intData: L.off("internal.data"),
      failReason: L.off("fail_entry.reason"),
      msrError: L.off("msr.error"),
      msrIndex: L.off("msr.index"),
      msrData: L.off("msr.data"),
      sysType: L.off("system_event.type"),
      validRegs: L.off("kvm_valid_regs"),
      dirtyRegs: L.off("kvm_dirty_regs"),
    };
    this.syncRegsAt = L.off("s.regs");
    this.syncSregsAt = L.off("s.sregs");
    this.k = {
      IO: K("KVM_EXIT_IO"),
      MMIO: K("KVM_EXIT_MMIO"),
      HLT: K("KVM_EXIT_HLT"),
      SHUTDOWN: K("KVM_EXIT_SHUTDOWN"),
      DEBUG: K("KVM_EXIT_DEBUG"),
      WRMSR: K("KVM_EXIT_X86_WRMSR"),
      RDMSR: K("KVM_EXIT_X86_RDMSR"),
      INTERNAL: K("KVM_EXIT_INTERNAL_ERROR"),
      FAIL: K("KVM_EXIT_FAIL_ENTRY"),
      SYSTEM: K("KVM_EXIT_SYSTEM_EVENT"),
      INTR: K("KVM_EXIT_INTR"),
      IO_OUT: K("KVM_EXIT_IO_OUT"),
    };
  }

  get exitReason(): number {
    return this.view.getUint32(this.o.reason, true);
  }

  set immediateExit(on: boolean) {
    this.view.setUint8(this.o.immediateExit, on ? 1 : 0);
  }

  /** KVM_SYNC_X86_* sets KVM stores into this page on every return from KVM_RUN. */
  set validRegs(mask: number) {
    this.view.setBigUint64(this.o.validRegs, BigInt(mask), true);
  }

  /** KVM_SYNC_X86_* sets changed in this page, for KVM to load at the next KVM_RUN (it clears the bits). */
  get dirtyRegs(): number {
    return Number(this.view.getBigUint64(this.o.dirtyRegs, true) & 0xffffn);
  }

  set dirtyRegs(mask: number) {
    this.view.setBigUint64(this.o.dirtyRegs, BigInt(mask), true);
  }

  /** Decode the exit KVM_RUN just reported. */
  decode(): VcpuExit {
    const v = this.view;
    const o = this.o;
    const k = this.k;
    const reason = v.getUint32(o.reason, true);
    switch (reason) {
      case k.IO: {
        const size = v.getUint8(o.ioSize);
        const count = v.getUint32(o.ioCount, true);
        const off = Number(v.getBigUint64(o.ioDataOffset, true));
        const len = size * count;
        if (!(size === 1 || size === 2 || size === 4) || off < 0 || off + len > this.bytes.length) {
          throw new GuardvisorError("INTERNAL", `malformed I/O exit (size ${size}, count ${count}, offset ${off})`);
        }
        const port = v.getUint16(o.ioPort, true);
        const data = this.bytes.subarray(off, off + len);
        return v.getUint8(o.ioDir) === k.IO_OUT
          ? { kind: "io-out", port, size, count, data }
          : { kind: "io-in", port, size, count, data };
      }
      case k.MMIO: {
        const gpa = Number(v.getBigUint64(o.mmioAddr, true));
        const len = Math.min(8, v.getUint32(o.mmioLen, true));
        const data = this.bytes.subarray(o.mmioData, o.mmioData + len);
        return v.getUint8(o.mmioIsWrite)
          ? { kind: "mmio-write", gpa, len, data }
          : { kind: "mmio-read", gpa, len, data };
      }
      case k.HLT:
        return { kind: "hlt" };
      case k.SHUTDOWN:
        return { kind: "shutdown" };
      case k.DEBUG:
        return {
          kind: "debug",
          exception: v.getUint32(o.dbgException, true),
          pc: v.getBigUint64(o.dbgPc, true),
          dr6: v.getBigUint64(o.dbgDr6, true),
          dr7: v.getBigUint64(o.dbgDr7, true),
        };
      case k.WRMSR:
        return { kind: "msr-write", index: v.getUint32(o.msrIndex, true), value: v.getBigUint64(o.msrData, true) };
      case k.RDMSR:
        return { kind: "msr-read", index: v.getUint32(o.msrIndex, true) };
      case k.INTERNAL: {
        const n = Math.min(16, v.getUint32(o.intNdata, true));
        const data: bigint[] = [];
        for (let i = 0; i < n; i++) data.push(v.getBigUint64(o.intData + 8 * i, true));
        return { kind: "internal-error", suberror: v.getUint32(o.intSub, true), data };
      }
      case k.FAIL:
        return { kind: "fail-entry", reason: v.getBigUint64(o.failReason, true) };
      case k.SYSTEM:
        return { kind: "system-event", type: v.getUint32(o.sysType, true) };
      case k.INTR:
        return { kind: "interrupted" };
      default:
        return { kind: "unknown", reason };
    }
  }

  /** Answer an MSR exit: 0 = done, 1 = inject #GP. */
  setMsrResult(error: 0 | 1, value = 0n): void {
    this.view.setUint8(this.o.msrError, error);
    this.view.setBigUint64(this.o.msrData, value, true);
  }
}
